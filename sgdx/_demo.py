"""`python -m sgdx demo`: the same training run with torch.optim.SGD and sgdx.sgd.

A 64-32-10 MLP on scikit-learn's bundled digits data (no download), from the same initial
weights over the same batches, with momentum + nesterov + weight decay and a learning rate
that drops mid-run. torch and scikit-learn are imported here only (``pip install
'sgdx[demo]'``).
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import sgdx

HIDDEN = 32
HYPERPARAMETERS = {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}


def _load_digits(seed: int, dtype: np.dtype) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = (x[order] / 16.0).astype(dtype), y[order]
    return x[:1500], y[:1500], x[1500:], y[1500:]


def _init(seed: int, dtype: np.dtype, n_in: int, n_out: int) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed + 1)

    def layer(fan_in: int, fan_out: int) -> dict[str, np.ndarray]:
        bound = 1 / np.sqrt(fan_in)  # torch.nn.Linear's default range
        return {
            "weight": rng.uniform(-bound, bound, (fan_out, fan_in)).astype(dtype),
            "bias": rng.uniform(-bound, bound, fan_out).astype(dtype),
        }

    return {"fc1": layer(n_in, HIDDEN), "fc2": layer(HIDDEN, n_out)}


Params = dict[str, dict[str, jax.Array]]


def _logits(params: Params, x: jax.Array) -> jax.Array:
    hidden = jnp.tanh(x @ params["fc1"]["weight"].T + params["fc1"]["bias"])
    return hidden @ params["fc2"]["weight"].T + params["fc2"]["bias"]


def _loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    log_probs = jax.nn.log_softmax(_logits(params, x))
    return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))


def run(
    epochs: int, batch_size: int, lr: float, decay_epoch: int, dtype_name: str, seed: int
) -> None:
    import torch

    dtype = np.dtype(dtype_name)
    if dtype == np.float64:
        jax.config.update("jax_enable_x64", True)  # type: ignore[no-untyped-call]
    x_train, y_train, x_test, y_test = _load_digits(seed, dtype)
    init = _init(seed, dtype, x_train.shape[1], 10)
    steps_per_epoch = len(y_train) // batch_size
    batches = (
        np.random.default_rng(seed + 2)
        .permuted(np.tile(np.arange(len(y_train)), (epochs, 1)), axis=1)[
            :, : steps_per_epoch * batch_size
        ]
        .reshape(epochs, steps_per_epoch, batch_size)
    )

    # torch
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    layers = {
        "fc1": torch.nn.Linear(x_train.shape[1], HIDDEN, dtype=torch_dtype),
        "fc2": torch.nn.Linear(HIDDEN, 10, dtype=torch_dtype),
    }
    model = torch.nn.Sequential(layers["fc1"], torch.nn.Tanh(), layers["fc2"])
    with torch.no_grad():
        for name, layer in layers.items():
            layer.weight.copy_(torch.from_numpy(init[name]["weight"]))
            layer.bias.copy_(torch.from_numpy(init[name]["bias"]))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, **HYPERPARAMETERS)  # type: ignore[arg-type]

    # sgdx: the learning-rate drop as a schedule over updates applied
    boundary = decay_epoch * steps_per_epoch
    tx = sgdx.sgd(lambda count: jnp.where(count < boundary, lr, lr / 10), **HYPERPARAMETERS)  # type: ignore[arg-type]
    params = jax.tree.map(jnp.asarray, init)
    state = tx.init(params)

    @jax.jit
    def step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(_loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return sgdx.apply_updates(params, updates), state, loss

    def accuracy(logits: np.ndarray) -> float:
        return float(np.mean(np.argmax(logits, axis=1) == y_test))

    print("sgdx demo: torch.optim.SGD and sgdx.sgd, same initial weights, same batches")
    print(
        f"  data   scikit-learn digits, {len(y_train)} train / {len(y_test)} test images, "
        f"{dtype.name}, batch {batch_size}"
    )
    print(f"  model  {x_train.shape[1]}-{HIDDEN}-10 MLP (tanh), cross-entropy")
    print(
        f"  SGD    lr={lr} (x0.1 from epoch {decay_epoch + 1}), momentum=0.9, nesterov=True, "
        "weight_decay=1e-4\n"
    )
    print(
        f"{'epoch':>5} {'lr':>7} {'torch loss':>12} {'sgdx loss':>12} {'max|Δparam|':>12} "
        f"{'test acc torch/sgdx':>20}"
    )
    for epoch in range(epochs):
        epoch_lr = lr if epoch < decay_epoch else lr / 10
        optimizer.param_groups[0]["lr"] = epoch_lr
        torch_losses, sgdx_losses = [], []
        for batch in batches[epoch]:
            xb, yb = x_train[batch], y_train[batch]
            optimizer.zero_grad()
            loss_t = torch.nn.functional.cross_entropy(
                model(torch.from_numpy(xb)), torch.from_numpy(yb)
            )
            loss_t.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            torch_losses.append(loss_t.item())
            params, state, loss = step(params, state, jnp.asarray(xb), jnp.asarray(yb))
            sgdx_losses.append(float(loss))
        torch_params = {
            name: {"weight": layer.weight, "bias": layer.bias} for name, layer in layers.items()
        }
        diff = max(
            float(np.max(np.abs(np.asarray(p) - t.detach().numpy())))
            for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(torch_params), strict=True)
        )
        with torch.no_grad():
            acc_t = accuracy(model(torch.from_numpy(x_test)).numpy())
        acc_s = accuracy(np.asarray(_logits(params, jnp.asarray(x_test))))
        print(
            f"{epoch + 1:>5} {epoch_lr:>7.3g} {np.mean(torch_losses):>12.6f} "
            f"{np.mean(sgdx_losses):>12.6f} {diff:>12.2e} {acc_t:>10.3f} / {acc_s:.3f}"
        )
    print(
        "\nmax|Δparam| is the largest difference between any torch and sgdx weight after the "
        "epoch;\nboth runs share data, batches and initial weights, so it measures rounding only."
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--decay-epoch", type=int, default=5, help="epochs before lr drops 10x")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--seed", type=int, default=0)
