"""The reference problem, and runners that step real torch.optim.SGD and sgdx through it.

The problem is a pytree of several leaf shapes whose gradient depends on the current
parameters: ``g_k(p) = c_k * (p - 1) + 0.1 * p**3 + n_k``, elementwise, computed in NumPy
from each side's own parameters, so the two optimizers are the only difference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import sgdx

SHAPES: dict[str, tuple[int, ...]] = {"w": (4, 3), "b": (3,), "s": (), "k": (2, 1, 3)}
STEPS = 24
LR_SWITCH = 12  # the learning rate drops 10x before this step

# PyTorch's own SGD test configurations (optim_inputs_func_sgd), then a few more.
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("default", {}),
    ("non-default lr", {"lr": 1e-2}),
    ("tensor lr", {"lr": "tensor:0.001"}),
    ("non-zero weight_decay", {"weight_decay": 0.5}),
    ("momentum", {"momentum": 0.9}),
    ("maximize", {"weight_decay": 0.1, "maximize": True}),
    ("dampening", {"momentum": 0.9, "dampening": 0.5}),
    ("weight_decay w/ momentum", {"momentum": 0.9, "weight_decay": 0.1}),
    ("nesterov", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
    # beyond torch's list
    (
        "everything",
        {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.01, "maximize": True},
    ),
    ("nesterov maximize", {"lr": 0.02, "momentum": 0.5, "nesterov": True, "maximize": True}),
    ("dampening 1", {"momentum": 0.7, "dampening": 1.0, "lr": 0.03}),
]

TORCH_DEFAULT_LR = 1e-3


def make_problem(
    seed: int, dtype: Any, steps: int = STEPS, maximize: bool = False
) -> dict[str, Any]:
    """Initial parameters and the per-step gradient coefficients, as NumPy arrays."""
    rng = np.random.default_rng(seed)
    params = {k: rng.uniform(-1.5, 1.5, size=s).astype(dtype) for k, s in SHAPES.items()}
    coef = {k: rng.uniform(0.5, 2.0, size=(steps, *s)).astype(dtype) for k, s in SHAPES.items()}
    noise = {k: rng.normal(0, 0.3, size=(steps, *s)).astype(dtype) for k, s in SHAPES.items()}
    return {"params": params, "coef": coef, "noise": noise, "maximize": maximize}


def gradient(problem: dict[str, Any], params: dict[str, np.ndarray], k: int) -> dict:
    """``g_k(p)`` for every leaf, in the parameters' dtype (negated for a maximize run, so
    that ascent converges too)."""
    sign = -1 if problem.get("maximize") else 1
    return {
        name: (
            sign * (problem["coef"][name][k] * (p - 1) + 0.1 * p**3 + problem["noise"][name][k])
        ).astype(p.dtype)
        for name, p in params.items()
    }


def learning_rates(kwargs: dict[str, Any], steps: int = STEPS) -> np.ndarray:
    """The learning rate of every step: the configured one, then 10x smaller from LR_SWITCH."""
    lr = kwargs.get("lr", TORCH_DEFAULT_LR)
    if isinstance(lr, str):  # "tensor:<value>": torch holds it as a float32 tensor
        lr0 = float(lr.split(":")[1])
        values = [np.float32(lr0), np.float32(lr0 / 10)]
    else:
        values = [lr, lr / 10]
    return np.array([float(values[0] if k < LR_SWITCH else values[1]) for k in range(steps)])


def run_torch(
    kwargs: dict[str, Any], problem: dict[str, Any], dtype: Any, steps: int = STEPS
) -> dict[str, np.ndarray]:
    """Steps torch.optim.SGD; returns parameters and momentum buffers after every step."""
    import torch

    lrs = learning_rates(kwargs, steps) if steps > LR_SWITCH else learning_rates(kwargs)[:steps]
    options = {k: v for k, v in kwargs.items() if k != "lr"}
    tensor_lr = isinstance(kwargs.get("lr"), str)
    lr0 = torch.tensor(float(lrs[0]), dtype=torch.float32) if tensor_lr else float(lrs[0])
    params = {k: torch.tensor(v) for k, v in problem["params"].items()}
    opt = torch.optim.SGD(list(params.values()), lr=lr0, **options)
    out: dict[str, list] = {f"param/{k}": [] for k in params} | {f"buf/{k}": [] for k in params}
    for k in range(steps):
        if tensor_lr:
            opt.param_groups[0]["lr"].fill_(float(lrs[k]))
        else:
            opt.param_groups[0]["lr"] = float(lrs[k])
        numpy_params = {name: p.detach().numpy().copy() for name, p in params.items()}
        for name, g in gradient(problem, numpy_params, k).items():
            params[name].grad = torch.tensor(g)
        opt.step()
        for name, p in params.items():
            out[f"param/{name}"].append(p.detach().numpy().copy())
            buf = opt.state[p].get("momentum_buffer")
            out[f"buf/{name}"].append(
                np.full(p.shape, np.nan, dtype) if buf is None else buf.numpy().copy()
            )
    return {k: np.stack(v) for k, v in out.items()}


def sgdx_optimizer(kwargs: dict[str, Any], lrs: Sequence[float], **extra: Any):
    """The sgdx optimizer for a torch configuration, with the per-step learning rates."""
    table = jnp.asarray(np.asarray(lrs))
    options = {k: v for k, v in kwargs.items() if k != "lr"}
    return sgdx.sgd(lambda count: table[count], **options, **extra)


def momentum_buffers(state: Any) -> dict[str, np.ndarray]:
    """The PyTorch-convention momentum buffers inside an sgdx state (however wrapped), by
    parameter name, for the buffers torch holds (none without momentum, none for a buffer
    that has not had a gradient yet)."""
    try:
        buffers = sgdx.momentum_buffers(state)
    except ValueError:  # no PyTorch-convention momentum
        return {}
    return {name: np.asarray(b) for name, b in buffers.items() if b is not None}


def run_sgdx(
    tx: sgdx.GradientTransformation,
    problem: dict[str, Any],
    steps: int = STEPS,
    grad_transform: Callable[[dict], dict] = lambda g: g,
) -> dict[str, np.ndarray]:
    """Steps an sgdx optimizer (jitted) through the problem, recording like :func:`run_torch`."""
    params = {k: jnp.asarray(v) for k, v in problem["params"].items()}
    state = tx.init(params)

    @jax.jit
    def step(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return sgdx.apply_updates(params, updates), state

    out: dict[str, list] = {f"param/{k}": [] for k in params} | {f"buf/{k}": [] for k in params}
    for k in range(steps):
        numpy_params = {name: np.asarray(p) for name, p in params.items()}
        grads = grad_transform(gradient(problem, numpy_params, k))
        params, state = step(grads, state, params)
        buffers = momentum_buffers(state)
        for name, p in params.items():
            out[f"param/{name}"].append(np.asarray(p))
            out[f"buf/{name}"].append(buffers.get(name, np.full(p.shape, np.nan, p.dtype)))
    return {k: np.stack(v) for k, v in out.items()}


RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-6}


def _sum_scale(buffers: np.ndarray, momentum: float) -> float:
    """The largest absolute sum of a momentum buffer's terms over a run: ``a_k = momentum *
    a_{k-1} + |b_k - momentum * b_{k-1}|`` (``b_k - momentum * b_{k-1}`` is step k's damped
    gradient; a buffer that does not exist yet counts as 0)."""
    b = np.nan_to_num(buffers, nan=0.0)
    a, previous, largest = np.zeros_like(b[0]), np.zeros_like(b[0]), 0.0
    for b_k in b:
        a = momentum * a + np.abs(b_k - momentum * previous)
        previous, largest = b_k, max(largest, float(np.max(a, initial=0.0)))
    return largest


def assert_trajectories_close(actual: dict, expected: dict, momentum: float | None = None) -> None:
    """Every recorded array after every step agrees to the dtype's parity tolerance.

    Each leaf is compared elementwise with ``|a - e| <= rtol * (|e| + scale)``, where
    ``scale`` is the leaf's largest magnitude over the run: a relative error that does not
    blow up where a momentum buffer crosses zero. ``rtol`` is 1e-12 for float64 and 1e-6
    for float32 (a few units in the last place). With ``momentum`` given, a buffer's
    ``scale`` is the largest absolute sum of its terms (:func:`_sum_scale`), the scale of the
    rounding a sum carries: a buffer of gradients that alternate in sign stays small while
    the rounding differences of its terms accumulate (momentum 0.99 sums about 100 of
    them). Where the gradients keep their sign the two scales are equal.
    """
    assert actual.keys() == expected.keys()
    for key, e_all in expected.items():
        rtol = RTOL[e_all.dtype]
        scale = np.nanmax(np.abs(e_all)) if not np.all(np.isnan(e_all)) else 0.0
        if momentum is not None and key.startswith("buf/"):
            scale = max(scale, _sum_scale(e_all, momentum))
        for k, (a, e) in enumerate(zip(actual[key], e_all, strict=True)):
            np.testing.assert_allclose(
                a,
                e,
                rtol=rtol,
                atol=rtol * scale,
                equal_nan=True,
                err_msg=f"{key} after step {k + 1}",
            )
