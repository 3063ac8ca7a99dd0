"""A torch run handed to JAX mid-warmup in one call, continued, and handed back to torch.

A 64-32-10 MLP on scikit-learn's digits, trained with torch.optim.SGD (two param groups,
nesterov momentum, weight decay on the body only) and a per-iteration schedule: 20 updates
of linear warmup into cosine annealing (torch's SequentialLR). Three runs from the same
start, printed side by side:

- torch throughout;
- torch for 8 updates (mid-warmup), then ``from_torch`` and sgdx;
- that sgdx run handed back with ``to_torch`` after update 40 and continued in torch.

    pip install -e '.[demo]' && python examples/resume_from_torch.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from sklearn.datasets import load_digits

import sgdx
from sgdx.interop import torch as torch_interop

jax.config.update("jax_enable_x64", True)
TO_JAX, TO_TORCH, TOTAL, BATCH = 8, 40, 60, 64

x, y = load_digits(return_X_y=True)
x = x / 16.0
batches = [np.arange(i, i + BATCH) % len(y) for i in range(0, TOTAL * BATCH, BATCH)]


def torch_run():
    """The recipe: model, optimizer and scheduler, built the same way on every start."""
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("fc1", torch.nn.Linear(64, 32, dtype=torch.float64))
    model.add_module("act", torch.nn.Tanh())
    model.add_module("fc2", torch.nn.Linear(32, 10, dtype=torch.float64))
    optimizer = torch.optim.SGD(
        [
            {"params": model.fc1.parameters(), "weight_decay": 1e-3},  # body: decayed
            {"params": model.fc2.parameters(), "lr": 0.05},  # head: its own lr
        ],
        lr=0.1,
        momentum=0.9,
        nesterov=True,
    )
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=20)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=TOTAL - 20)
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], [20])
    return model, optimizer, scheduler


lrs: list[float] = []  # the body's learning rate at each update, from the reference run


def torch_step(model, optimizer, scheduler, k: int) -> float:
    if optimizer is reference[1]:
        lrs.append(optimizer.param_groups[0]["lr"])
    optimizer.zero_grad()
    batch = batches[k]
    loss = torch.nn.functional.cross_entropy(model(torch.tensor(x[batch])), torch.tensor(y[batch]))
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.item()


def loss_fn(params, xb, yb):
    hidden = jnp.tanh(xb @ params["fc1.weight"].T + params["fc1.bias"])
    logits = hidden @ params["fc2.weight"].T + params["fc2.bias"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], axis=1))


reference = torch_run()
handed = torch_run()
losses: dict[str, list[float]] = {"torch": [], "torch -> sgdx -> torch": []}
for k in range(TO_JAX):
    losses["torch"].append(torch_step(*reference, k))
    losses["torch -> sgdx -> torch"].append(torch_step(*handed, k))

# To JAX, in one call: groups, buffers, flags, and the scheduler's position.
model, optimizer, scheduler = handed
run = torch_interop.from_torch(optimizer, model, scheduler)
params, state = run.params, run.state


@jax.jit
def step(params, state, xb, yb):
    loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
    updates, state = run.tx.update(grads, state, params)
    return sgdx.apply_updates(params, updates), state, loss


losses["torch -> sgdx"] = list(losses["torch"])
for k in range(TO_JAX, TO_TORCH):
    losses["torch"].append(torch_step(*reference, k))
    params, state, loss = step(
        params, state, jnp.asarray(x[batches[k]]), jnp.asarray(y[batches[k]])
    )
    losses["torch -> sgdx"].append(float(loss))
    losses["torch -> sgdx -> torch"].append(float(loss))

# Back to torch: the recipe builds its objects afresh and loads what sgdx wrote.
checkpoint = torch_interop.to_torch(run, state, params)
model, optimizer, scheduler = torch_run()
optimizer.load_state_dict(checkpoint.optimizer)
scheduler.load_state_dict(checkpoint.scheduler)
model.load_state_dict(checkpoint.parameters)
for k in range(TO_TORCH, TOTAL):
    losses["torch"].append(torch_step(*reference, k))
    losses["torch -> sgdx -> torch"].append(torch_step(model, optimizer, scheduler, k))

print(f"to sgdx after update {TO_JAX} (warmup), back to torch after update {TO_TORCH}\n")
print(f"{'update':>6} {'lr':>8} {'torch':>12} {'torch->sgdx':>12} {'->torch':>12}")
for k in range(TOTAL):
    if k % 4 == 3 or k in (TO_JAX - 1, TO_JAX, TO_TORCH - 1, TO_TORCH):
        sgdx_loss = f"{losses['torch -> sgdx'][k]:>12.9f}" if k < TO_TORCH else f"{'':>12}"
        print(
            f"{k + 1:>6} {lrs[k]:>8.5f} {losses['torch'][k]:>12.9f} {sgdx_loss} "
            f"{losses['torch -> sgdx -> torch'][k]:>12.9f}"
        )
weights = max(
    float(np.max(np.abs(a.detach().numpy() - b.detach().numpy())))
    for a, b in zip(model.parameters(), reference[0].parameters(), strict=True)
)
gaps = [abs(a - b) for a, b in zip(losses["torch"], losses["torch -> sgdx -> torch"], strict=True)]
print(f"\nmax |loss difference| over all {TOTAL} updates: {max(gaps):.1e}")
print(f"max |weight difference| after update {TOTAL}: {weights:.1e}")
