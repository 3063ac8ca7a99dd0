"""`skip_nonfinite`: torch's GradScaler / fused ``found_inf`` step skipping, as a wrapper."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from sgdx import _hyperparams, _step, _tree
from sgdx._base import GradientTransformation, OptState, Params, Updates


class SkipNonFiniteState(NamedTuple):
    """State of :func:`skip_nonfinite`."""

    inner_state: OptState
    """The wrapped transform's state, unchanged by a skipped step."""
    skipped: jax.Array
    """Steps skipped so far (int32, saturating)."""


def skip_nonfinite(
    inner: GradientTransformation, *, grad_scale: ArrayLike | None = None
) -> GradientTransformation:
    r"""Skips the whole step when any gradient is not finite, as torch's ``GradScaler`` does.

    Gradients are first unscaled, :math:`g \leftarrow g \cdot (1 / s)` for ``grad_scale``
    :math:`s` (torch multiplies by the reciprocal too). If any element of any gradient is
    then ``inf`` or ``NaN``, the step is skipped: the updates are zero and the wrapped
    state (momentum buffers, counts) is returned unchanged, and ``skipped`` counts it.
    Otherwise this is the wrapped transform on the unscaled gradients.

    Without this wrapper sgdx does what ``torch.optim.SGD`` does: non-finite values flow
    into parameters and buffers.

    Note:
      A skipped step does not advance the wrapped transform's count, so a schedule sees
      only applied updates; torch's scheduler, stepped by the user, advances regardless.

    Args:
      inner: the transform to guard, e.g. ``sgdx.sgd(...)``.
      grad_scale: the loss scale :math:`s` the gradients carry (a float or scalar array),
        or ``None`` for no unscaling.

    Returns:
      A :class:`~sgdx.GradientTransformation` with a :class:`SkipNonFiniteState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> tx = sgdx.skip_nonfinite(sgdx.sgd(0.5, momentum=0.9), grad_scale=4.0)
      >>> state = tx.init(jnp.zeros(2))
      >>> updates, state = tx.update(jnp.array([4.0, jnp.inf]), state)
      >>> print(updates, int(state.skipped))
      [0. 0.] 1
      >>> updates, state = tx.update(jnp.array([4.0, 8.0]), state)
      >>> print(updates, int(state.skipped))
      [-0.5 -1. ] 1
    """

    if grad_scale is not None:
        _hyperparams.check_hyperparameter(grad_scale, "grad_scale")
        scale = _hyperparams.concrete(grad_scale)
        if scale is not None and not (math.isfinite(scale) and scale > 0):
            raise ValueError(
                f"skip_nonfinite: grad_scale must be a positive finite loss scale, got {scale}; "
                "a zero, negative or NaN scale would turn every step into garbage (a "
                "negative one into gradient ascent)."
            )

    def init_fn(params: Params) -> SkipNonFiniteState:
        return SkipNonFiniteState(inner.init(params), jnp.zeros((), jnp.int32))

    def unscaled(updates: Updates) -> tuple[Updates, jax.Array | bool]:
        """The gradients unscaled, and whether any of them is not finite."""
        if grad_scale is not None:
            (updates,) = _tree.map_updates(
                lambda g: (g * (1 / jnp.asarray(grad_scale, g.dtype)),), updates, names=()
            )
        leaves = [u for u in jax.tree.leaves(updates) if u is not None]
        found = jnp.any(jnp.stack([~jnp.all(jnp.isfinite(u)) for u in leaves])) if leaves else False
        return updates, found

    def update_fn(
        updates: Updates, state: SkipNonFiniteState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, SkipNonFiniteState]:
        _tree.check_state(state, SkipNonFiniteState, "skip_nonfinite")
        updates, found = unscaled(updates)
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)
        (new_updates,) = _tree.map_updates(
            lambda u: (jnp.where(found, jnp.zeros_like(u), u),), new_updates, names=()
        )
        kept = jax.tree.map(
            lambda new, old: jnp.where(found, old, new), new_inner, state.inner_state
        )
        skipped = jnp.where(found, _tree.safe_increment(state.skipped), state.skipped)
        return new_updates, SkipNonFiniteState(kept, skipped)

    def step_fn(
        params: Params, grads: Updates, state: SkipNonFiniteState
    ) -> tuple[Params, SkipNonFiniteState]:
        """The inner step, taken only when every gradient is finite (``lax.cond``: the
        skipped branch touches nothing)."""
        _tree.check_state(state, SkipNonFiniteState, "skip_nonfinite")
        grads, found = unscaled(grads)

        def take(operands: tuple[Params, OptState]) -> tuple[Params, OptState]:
            return _step.run(inner, operands[0], grads, operands[1])

        params, kept = jax.lax.cond(
            found, lambda operands: operands, take, (params, state.inner_state)
        )
        skipped = jnp.where(found, _tree.safe_increment(state.skipped), state.skipped)
        return params, SkipNonFiniteState(kept, skipped)

    return _step.with_step(init_fn, update_fn, step_fn)
