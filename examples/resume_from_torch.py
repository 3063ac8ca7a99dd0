"""Train in PyTorch, save the optimizer checkpoint, resume in JAX with sgdx.

A 64-32-10 MLP on scikit-learn's digits: three epochs with torch.optim.SGD (two param
groups, momentum, weight decay, a StepLR schedule), then `torch.save` of the model and
optimizer. The run continues twice from that checkpoint, in torch and in JAX with sgdx
(params from the model's state_dict, optimizer state from the optimizer's), and the losses
and weights of the two continuations are printed side by side.

    pip install -e '.[demo]' && python examples/resume_from_torch.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from sklearn.datasets import load_digits

import sgdx
from sgdx.interop import torch as torch_interop

jax.config.update("jax_enable_x64", True)
EPOCHS_IN_TORCH, EPOCHS_AFTER, BATCH = 3, 4, 100

x, y = load_digits(return_X_y=True)
x, y = x / 16.0, y
batches = [np.arange(i, i + BATCH) for i in range(0, len(y) - BATCH + 1, BATCH)]


def torch_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("fc1", torch.nn.Linear(64, 32, dtype=torch.float64))
    model.add_module("act", torch.nn.Tanh())
    model.add_module("fc2", torch.nn.Linear(32, 10, dtype=torch.float64))
    return model


def torch_optimizer(model: torch.nn.Module):
    optimizer = torch.optim.SGD(
        [
            {"params": model.fc1.parameters(), "weight_decay": 1e-3},  # body: decayed
            {"params": model.fc2.parameters(), "lr": 0.05},  # head: its own lr, no decay
        ],
        lr=0.1,
        momentum=0.9,
    )
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)


def torch_epoch(model, optimizer, scheduler) -> float:
    losses = []
    for batch in batches:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(torch.tensor(x[batch])), torch.tensor(y[batch])
        )
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    scheduler.step()
    return float(np.mean(losses))


# 1. PyTorch: train, then checkpoint like any torch recipe does.
model = torch_model()
optimizer, scheduler = torch_optimizer(model)
for _ in range(EPOCHS_IN_TORCH):
    torch_epoch(model, optimizer, scheduler)
checkpoint = Path(tempfile.mkdtemp()) / "checkpoint.pt"
torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)

# 2. JAX: parameters from the model's state_dict, optimizer state from the optimizer's.
saved = torch.load(checkpoint)
params = {
    layer: {
        "weight": jnp.asarray(saved["model"][f"{layer}.weight"].numpy()),
        "bias": jnp.asarray(saved["model"][f"{layer}.bias"].numpy()),
    }
    for layer in ("fc1", "fc2")
}
names = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]  # the optimizer's parameter order
labels = {"fc1": {"weight": "body", "bias": "body"}, "fc2": {"weight": "head", "bias": "head"}}
tx = sgdx.param_groups(
    labels,
    {"body": {"weight_decay": 1e-3}, "head": {"learning_rate": 0.05}},
    learning_rate=0.1,
    momentum=0.9,
)
state = torch_interop.load_state_dict(saved["optimizer"], tx.init(params), params, names)


def loss_fn(params, xb, yb):
    hidden = jnp.tanh(xb @ params["fc1"]["weight"].T + params["fc1"]["bias"])
    logits = hidden @ params["fc2"]["weight"].T + params["fc2"]["bias"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], axis=1))


@jax.jit
def step(params, state, xb, yb):
    loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
    updates, state = tx.update(grads, state, params)
    return sgdx.apply_updates(params, updates), state, loss


# StepLR(step_size=2, gamma=0.5), stepped per epoch: the epoch count continues from torch's.
def epoch_lr(epoch: int, base: float) -> float:
    return base * 0.5 ** (epoch // 2)


# 3. Continue both and compare.
model_torch = torch_model()
model_torch.load_state_dict(saved["model"])
optimizer_torch, scheduler_torch = torch_optimizer(model_torch)
optimizer_torch.load_state_dict(saved["optimizer"])
scheduler_torch.load_state_dict(scheduler.state_dict())

print(f"resumed after {EPOCHS_IN_TORCH} torch epochs from {checkpoint.name}\n")
print(f"{'epoch':>5} {'torch loss':>12} {'sgdx loss':>12} {'max|Δweight|':>13}")
for epoch in range(EPOCHS_IN_TORCH, EPOCHS_IN_TORCH + EPOCHS_AFTER):
    state = sgdx.set_hyperparams(state, group="body", learning_rate=epoch_lr(epoch, 0.1))
    state = sgdx.set_hyperparams(state, group="head", learning_rate=epoch_lr(epoch, 0.05))
    torch_loss = torch_epoch(model_torch, optimizer_torch, scheduler_torch)
    losses = []
    for batch in batches:
        params, state, loss = step(params, state, jnp.asarray(x[batch]), jnp.asarray(y[batch]))
        losses.append(float(loss))
    torch_params = model_torch.state_dict()
    diff = max(
        float(
            np.max(
                np.abs(np.asarray(params[layer][kind]) - torch_params[f"{layer}.{kind}"].numpy())
            )
        )
        for layer in ("fc1", "fc2")
        for kind in ("weight", "bias")
    )
    print(f"{epoch + 1:>5} {torch_loss:>12.8f} {np.mean(losses):>12.8f} {diff:>13.2e}")
