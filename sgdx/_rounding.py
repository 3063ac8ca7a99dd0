"""`stochastic_rounding`: parameter updates rounded stochastically to low-precision dtypes."""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sgdx import _hyperparams, _tree
from sgdx._base import GradientTransformation, Params, Updates

_IMPL = "threefry2x32"  # the key's layout in the state: [0, seed] for a seed below 2**32


class StochasticRoundingState(NamedTuple):
    """State of :func:`stochastic_rounding`."""

    key: jax.Array
    """The raw ``threefry2x32`` PRNG key (uint32, shape ``(2,)``) of the next update's
    noise; split once per update."""


def round_stochastically(x: jax.Array, dtype: Any, key: jax.Array) -> jax.Array:
    r"""``x`` rounded to ``dtype``, up or down at random: to the neighbour :math:`hi` with
    probability :math:`(x - lo) / (hi - lo)`, else to :math:`lo`, where :math:`lo \le x <
    hi` are the adjacent values of ``dtype`` around ``x``. Unbiased, :math:`E[\text{result}]
    = x`; a value of ``dtype`` is returned unchanged, and non-finite values or values beyond
    ``dtype``'s range are rounded to nearest. ``x`` is float32 (or wider), ``key`` a typed
    PRNG key."""
    nearest = x.astype(dtype)
    wide = nearest.astype(x.dtype)
    below = wide > x  # nearest is above x: its lower neighbour is the other candidate
    other = jnp.nextafter(nearest, jnp.where(below, -jnp.inf, jnp.inf).astype(dtype))
    lo = jnp.where(below, other, nearest).astype(x.dtype)
    hi = jnp.where(below, nearest, other).astype(x.dtype)
    up = jax.random.uniform(key, x.shape, x.dtype) * (hi - lo) < x - lo
    rounded = jnp.where(up, hi, lo).astype(dtype)
    return jnp.where(jnp.isfinite(wide) & jnp.isfinite(hi - lo), rounded, nearest)


def stochastic_rounding(seed: int = 0) -> GradientTransformation:
    r"""Rounds each low-precision parameter's new value stochastically instead of to nearest.

    For a parameter :math:`p` whose dtype is narrower than float32 (bfloat16, float16) with
    an update :math:`u`, the new value :math:`x = p + u` is computed in float32 and rounded
    to :math:`p`'s dtype by :func:`round_stochastically`: up or down with the probabilities
    that make the result unbiased, :math:`E[p'] = x`. The update emitted is :math:`p' - p`,
    in :math:`p`'s dtype, so that :func:`sgdx.apply_updates` lands on :math:`p'` (exactly
    whenever the step is at most half of :math:`|p|`, the small steps rounding is about;
    Sterbenz). Round to nearest loses every step below half a unit in the last place of
    :math:`p` (in bfloat16, :math:`|u| < 2^{-9}|p|`); stochastic rounding keeps them on
    average. Float32 and wider parameters pass unchanged.

    The noise comes from a PRNG key in the state, seeded by ``seed`` and split once per
    update, so a run is reproducible from its seed and its state; each leaf draws from its
    own fold of the key. ``jax.random`` draws the same numbers whatever the arrays'
    sharding, so sharded parameters round as unsharded ones do.

    Place it last in a chain (it needs the final update): ``sgdx.sgd(...,
    stochastic_rounding=True)`` does.

    Args:
      seed: an integer in :math:`[0, 2^{32})` (or a 0-d integer array, as
        ``optax.inject_hyperparams`` passes it).

    Returns:
      A :class:`~sgdx.GradientTransformation` with a :class:`StochasticRoundingState`; its
      ``update`` needs ``params``.

    Raises:
      TypeError: for a seed that is not an integer.
      ValueError: for a seed outside :math:`[0, 2^{32})`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> params = jnp.ones(10_000, jnp.bfloat16)  # bfloat16's spacing above 1 is 2**-7
      >>> tx = sgdx.chain(sgdx.scale_by_learning_rate(2.0**-9), sgdx.stochastic_rounding())
      >>> updates, _ = tx.update(-jnp.ones_like(params), tx.init(params), params)
      >>> new = sgdx.apply_updates(params, updates)  # 1 + 2**-9: up to 1 + 2**-7 1/4 of the time
      >>> print(sorted(set(new.tolist())), round(float(new.astype(jnp.float32).mean()), 4))
      [1.0, 1.0078125] 1.002
      >>> print(params + jnp.bfloat16(2.0**-9) == 1)  # round to nearest loses the step
      [ True  True  True ...  True  True  True]
    """
    integer_array = (
        isinstance(seed, np.ndarray | jax.Array)
        and jnp.issubdtype(seed.dtype, jnp.integer)
        and seed.ndim == 0
    )
    if isinstance(seed, bool) or not (isinstance(seed, int | np.integer) or integer_array):
        raise TypeError(f"stochastic_rounding: seed must be an integer, got {seed!r}.")
    value = _hyperparams.concrete(seed)
    if value is not None and not 0 <= value < 2**32:
        raise ValueError(f"stochastic_rounding: seed must be in [0, 2**32), got {value}.")

    def init_fn(params: Params) -> StochasticRoundingState:
        if integer_array:  # as optax.inject_hyperparams passes it, possibly traced
            high = jnp.zeros((), jnp.uint32)
            return StochasticRoundingState(jnp.stack([high, jnp.asarray(seed).astype(jnp.uint32)]))
        return StochasticRoundingState(_tree.host_array(np.array([0, seed], np.uint32), params))

    def update_fn(
        updates: Updates,
        state: StochasticRoundingState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, StochasticRoundingState]:
        del extra_args
        _tree.check_state(state, StochasticRoundingState, "stochastic_rounding")
        if params is None:
            raise ValueError(
                "stochastic_rounding needs the parameters: call update(updates, state, params)."
            )
        key, noise = jax.random.split(jax.random.wrap_key_data(state.key, impl=_IMPL))
        leaf = itertools.count()  # the key is folded with each updated leaf's index

        def rounded(u: jax.Array, p: jax.Array) -> tuple[jax.Array, jax.Array]:
            p = jnp.asarray(p)
            index = next(leaf)
            if not jnp.issubdtype(p.dtype, jnp.floating) or p.dtype.itemsize >= 4:
                return u, p
            wide = p.astype(jnp.float32)
            x = wide + u.astype(jnp.float32)
            new = round_stochastically(x, p.dtype, jax.random.fold_in(noise, index))
            return (new.astype(jnp.float32) - wide).astype(p.dtype), p

        updates, _ = _tree.map_updates(
            rounded, updates, params, names=("parameters",), same_shape_as=0
        )
        return updates, StochasticRoundingState(jax.random.key_data(key))

    return GradientTransformation(init_fn, update_fn)
