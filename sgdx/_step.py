"""`step`: torch's ``optimizer.step()``, and the in-place form a transformation carries.

A transformation may carry a step, ``step(params, grads, state) -> (params, state)``, that
computes exactly ``update`` then :func:`~sgdx.apply_updates` in fewer passes (sgd's native
kernel). sgdx's wrappers pass their inner transformation's step on; :func:`step` runs the
outermost one. Where a wrapper does not (an optax combinator), :func:`step` runs ``update``
and ``apply_updates`` instead, and an sgd inside it that had an in-place step says so once.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sgdx import _base, _warn  # _base's chain carries steps: module, not names

if TYPE_CHECKING:
    from sgdx._base import (
        GradientTransformation,
        OptState,
        Params,
        TransformInitFn,
        TransformUpdateFn,
        Updates,
    )

StepFn = Callable[[Any, Any, Any], tuple[Any, Any]]
"""``step(params, grads, state) -> (params, state)``."""

# The update function's attribute that holds its transformation's step.
_ATTRIBUTE = "sgdx_step"

# While `run` stands in for a missing step: the wrapper that has none.
_without_step: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sgdx_without_step", default=None
)


def with_step(
    init: TransformInitFn, update: TransformUpdateFn, step_fn: StepFn
) -> GradientTransformation:
    """The transformation ``(init, update)`` carrying ``step_fn`` (which must compute what
    ``update`` then ``apply_updates`` computes). ``update`` must be a function of the
    caller's own making: the step is held on it."""
    update.__dict__[_ATTRIBUTE] = step_fn
    return _base.GradientTransformation(init, update)


def step_of(tx: GradientTransformation) -> StepFn | None:
    """The step ``tx`` carries, or ``None``."""
    return getattr(tx.update, _ATTRIBUTE, None)


def _name(update: Callable[..., Any]) -> str:
    qualname = getattr(update, "__qualname__", type(update).__qualname__)
    package = str(getattr(update, "__module__", None)).partition(".")[0]
    return f"{package}.{qualname.partition('.<locals>')[0]}"  # optax.chain, not its module


def run(
    tx: GradientTransformation, params: Params, grads: Updates, state: OptState
) -> tuple[Params, OptState]:
    """``tx``'s step, or ``update`` then ``apply_updates`` where it has none."""
    in_place = step_of(tx)
    if in_place is not None:
        return in_place(params, grads, state)
    token = _without_step.set(_name(tx.update))
    try:
        updates, state = tx.update(grads, state, params)
    finally:
        _without_step.reset(token)
    return _base.apply_updates(params, updates), state


def hidden_by() -> str | None:
    """While :func:`run` calls the ``update`` of a transformation without a step in place of
    its step: that transformation's name (an sgd with a step inside it lost the step)."""
    return _without_step.get()


@functools.cache
def warn_hidden(wrapper: str) -> None:
    """One warning per wrapper that hides sgd's in-place step from :func:`step`."""
    _warn.warn(
        f"sgdx.step: {wrapper} wraps an sgdx.sgd that has an in-place step (the native "
        "kernel's single pass over parameters and buffers), but does not pass it on, so "
        "the step runs update + apply_updates: the same numbers, more passes over memory. "
        "sgdx's wrappers (chain with sgd last, inject_hyperparams, param_groups, "
        "skip_nonfinite) keep it; sgdx.sgd(..., fused=False) asks for the pure-JAX path "
        "without this warning."
    )


def step(
    tx: GradientTransformation, params: Params, grads: Updates, state: OptState
) -> tuple[Params, OptState]:
    """torch's ``optimizer.step()``: the updated parameters and state, for any transform.

    For :func:`sgdx.sgd` with its native kernel (on CPU), one in-place pass over parameters
    and momentum buffers: 20 bytes of memory traffic per float32 parameter, written over
    the inputs when the caller donates them (``jax.jit(..., donate_argnums=(1, 3))``). The
    pass is kept through :func:`sgdx.chain` (sgd last), :func:`sgdx.inject_hyperparams`,
    :func:`sgdx.param_groups` (one pass per group, with its hyperparameters) and
    :func:`sgdx.skip_nonfinite`, and so for every :func:`sgdx.interop.torch.from_torch`
    run. Otherwise ``tx.update`` then :func:`sgdx.apply_updates`, the same numbers; when a
    wrapper that is not sgdx's hides an sgd's in-place step, a warning names the wrapper
    once (``sgdx.sgd(..., fused=True)`` raises instead).

    Args:
      tx: the transformation.
      params: the parameters.
      grads: their gradients (``None`` leaves: no gradient in this step).
      state: ``tx``'s state.

    Returns:
      ``(params, state)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import sgdx
      >>> tx = sgdx.sgd(0.5, momentum=0.5)
      >>> params = {"w": jnp.ones(3, jnp.float32)}
      >>> state = tx.init(params)
      >>> train_step = jax.jit(sgdx.step, static_argnums=0, donate_argnums=(1, 3))
      >>> params, state = train_step(tx, params, {"w": jnp.ones(3, jnp.float32)}, state)
      >>> print(params["w"])
      [0.5 0.5 0.5]
    """
    return run(tx, params, grads, state)
