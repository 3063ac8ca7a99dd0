"""Reading sgd's state by parameter: where a state, however wrapped, keeps its momentum."""

from __future__ import annotations

from typing import Any

import jax
from jax.tree_util import keystr, tree_flatten_with_path

from sgdx import _tree
from sgdx._base import OptState
from sgdx._momentum import SutskeverTraceState, TraceState


def _is_none(x: Any) -> bool:
    return x is None


def _is_momentum_state(x: Any) -> bool:
    return isinstance(x, TraceState | SutskeverTraceState)


def dotted(path: tuple[Any, ...]) -> str:
    """A pytree path as torch names a parameter: ``params["fc1"]["weight"]`` is
    ``"fc1.weight"``, list index ``i`` is ``"i"``."""
    return keystr(path, simple=True, separator=".")


def momentum_buffers(state: OptState) -> dict[str, jax.Array | None]:
    """PyTorch's ``optimizer.state[p]["momentum_buffer"]`` for every parameter, by name.

    ``state`` is the state of :func:`sgdx.sgd` (PyTorch convention) or of anything wrapping
    it: :func:`sgdx.inject_hyperparams`, :func:`sgdx.param_groups`,
    :func:`sgdx.skip_nonfinite`, ``optax.chain``, ``optax.MultiSteps``, ... Names are the
    parameters' dotted pytree paths (``params["fc1"]["weight"]`` is ``"fc1.weight"``), in
    ``jax.tree.leaves`` order. A parameter whose buffer has not started (no gradient yet), or
    that no group optimizes, maps to ``None``, as torch holds no ``momentum_buffer`` for it.

    Raises:
      ValueError: when the state has no PyTorch-convention momentum (momentum off, or
        ``convention="sutskever"``: convert with
        :func:`sgdx.conventions.sutskever_to_pytorch` first).

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> params = {"fc": {"weight": jnp.ones(2), "bias": jnp.ones(1)}}
      >>> tx = sgdx.sgd(0.1, momentum=0.9)
      >>> grads = {"fc": {"weight": jnp.full(2, 0.5), "bias": None}}
      >>> _, state = tx.update(grads, tx.init(params), params)
      >>> sgdx.momentum_buffers(state)
      {'fc.bias': None, 'fc.weight': Array([0.5, 0.5], dtype=float64)}
    """
    found = [x for x in jax.tree.leaves(state, is_leaf=_is_momentum_state) if _is_momentum_state(x)]
    if not found or any(isinstance(x, SutskeverTraceState) for x in found):
        what = "a Sutskever-convention velocity" if found else "no momentum buffer"
        raise ValueError(
            f"momentum_buffers: this state holds {what}. PyTorch's buffers exist for "
            "sgdx.sgd(..., momentum != 0) in the PyTorch convention; convert a Sutskever "
            "state with sgdx.conventions.sutskever_to_pytorch first."
        )
    buffers: dict[str, jax.Array | None] = {}
    for trace in found:
        flags = _tree.per_leaf(trace.initialized, trace.momentum_buffer, "momentum flags")
        paths = tree_flatten_with_path(trace.momentum_buffer, is_leaf=_is_none)[0]
        for (path, buffer), flag in zip(paths, jax.tree.leaves(flags, _is_none), strict=True):
            started = buffer is not None and (isinstance(flag, jax.core.Tracer) or bool(flag))
            if started or dotted(path) not in buffers:  # groups: another group's parameter
                buffers[dotted(path)] = buffer if started else None
    return buffers
