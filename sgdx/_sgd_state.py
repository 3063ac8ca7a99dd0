"""sgd's state: its layout, the chain that builds it, and reading or replacing it through
any wrapper. The one place that knows where sgd keeps its momentum and its count."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from jax.tree_util import keystr, tree_flatten_with_path

from sgdx import _tree
from sgdx._base import EmptyState, GradientTransformation, OptState, Params, Updates
from sgdx._momentum import SutskeverTraceState, TraceState
from sgdx._rounding import StochasticRoundingState
from sgdx._transforms import ScaleByLearningRateState

HYPERPARAMETERS = ("learning_rate", "momentum", "dampening", "weight_decay")
"""sgd's numeric hyperparameters, in the order the native kernel reads them
(``_native/sgd_step.cc``: ``hyper[0..3]``)."""


class SGDState(NamedTuple):
    """State of :func:`sgdx.sgd`: the state of each stateful link of its chain, by name;
    ``None`` where the configuration has no such link. Its fields say where things are
    whatever the options (``maximize`` and coupled weight decay keep no state)."""

    momentum: TraceState | SutskeverTraceState | None
    """PyTorch's buffers (:class:`~sgdx.TraceState`) or Sutskever's velocity
    (:class:`~sgdx.SutskeverTraceState`, which holds the count of its learning rate
    schedule); ``None`` without momentum."""
    learning_rate: ScaleByLearningRateState | EmptyState | None
    """The learning-rate step's count (:class:`~sgdx.ScaleByLearningRateState`) for a
    schedule, an :class:`~sgdx.EmptyState` for a fixed learning rate; ``None`` with
    Sutskever momentum, whose velocity takes the learning rate."""
    decoupled_weight_decay: ScaleByLearningRateState | EmptyState | None
    """``decoupled_weight_decay=True`` only: as ``learning_rate``, for the decay's step."""
    stochastic_rounding: StochasticRoundingState | None
    """``stochastic_rounding=True`` only: the rounding noise's key."""


# The links in the order they apply; the stateless ones keep no field.
_ORDER = ("maximize", "weight_decay", *SGDState._fields)
_STATELESS = ("maximize", "weight_decay")


def chain(**links: GradientTransformation | None) -> GradientTransformation:
    """sgd's links applied in ``_ORDER`` (``None``: not in this configuration), with an
    :class:`SGDState`."""

    def init_fn(params: Params) -> SGDState:
        return SGDState(
            **{
                name: None if links[name] is None else links[name].init(params)  # type: ignore[union-attr]
                for name in SGDState._fields
            }
        )

    def update_fn(
        updates: Updates, state: SGDState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, SGDState]:
        if not isinstance(state, SGDState):
            raise TypeError(
                f"sgd: expected sgdx's SGDState, got {type(state).__name__}. "
                f"{_tree.made_by(state)}Build it with this optimizer's init(params)."
            )
        for name in SGDState._fields:
            if (links[name] is None) != (getattr(state, name) is None):
                raise ValueError(
                    f"sgd: the state {'has' if links[name] is None else 'lacks'} a "
                    f"{name!r} state, which this sgd configuration "
                    f"{'does not keep' if links[name] is None else 'keeps'}: it was made by "
                    "sgd with other options. Build it with this optimizer's init(params)."
                )
        new: dict[str, Any] = {}
        for name in _ORDER:
            link = links[name]
            if link is not None:
                inner = EmptyState() if name in _STATELESS else getattr(state, name)
                updates, new[name] = link.update(updates, inner, params)
        return updates, state._replace(**{k: v for k, v in new.items() if k in SGDState._fields})

    return GradientTransformation(init_fn, update_fn)


def _is_sgd_state(x: Any) -> bool:
    return isinstance(x, SGDState)


def states(state: OptState) -> list[SGDState]:
    """Every sgd state inside ``state``, however wrapped (``inject_hyperparams``,
    ``param_groups``, ``skip_nonfinite``, ``optax.chain``, ...), in tree order."""
    return [x for x in jax.tree.leaves(state, is_leaf=_is_sgd_state) if _is_sgd_state(x)]


def replace(state: OptState, convert: Callable[[SGDState], SGDState]) -> OptState:
    """``state`` with every sgd state inside it replaced by ``convert(sgd_state)``."""
    return jax.tree.map(
        lambda x: convert(x) if _is_sgd_state(x) else x, state, is_leaf=_is_sgd_state
    )


def count(state: SGDState) -> jax.Array | None:
    """The updates applied so far, where the state keeps them (for a schedule), else ``None``."""
    for part in (state.learning_rate, state.momentum):
        if isinstance(part, ScaleByLearningRateState | SutskeverTraceState):
            return part.count
    return None


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
    found = [s.momentum for s in states(state) if s.momentum is not None]
    if not found or any(isinstance(x, SutskeverTraceState) for x in found):
        what = "a Sutskever-convention velocity" if found else "no momentum buffer"
        raise ValueError(
            f"momentum_buffers: this state holds {what}. PyTorch's buffers exist for "
            "sgdx.sgd(..., momentum != 0) in the PyTorch convention; convert a Sutskever "
            "state with sgdx.conventions.sutskever_to_pytorch first."
        )
    buffers: dict[str, jax.Array | None] = {}
    for trace in found:
        assert isinstance(trace, TraceState)
        flags = _tree.per_leaf(trace.initialized, trace.momentum_buffer, "momentum flags")
        paths = tree_flatten_with_path(trace.momentum_buffer, is_leaf=_tree.is_none)[0]
        for (path, buffer), flag in zip(paths, jax.tree.leaves(flags, _tree.is_none), strict=True):
            started = buffer is not None and (isinstance(flag, jax.core.Tracer) or bool(flag))
            if started or dotted(path) not in buffers:  # groups: another group's parameter
                buffers[dotted(path)] = buffer if started else None
    return buffers
