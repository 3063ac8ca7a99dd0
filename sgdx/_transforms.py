"""Stateless and learning-rate primitives: `maximize`, `add_decayed_weights`,
`scale_by_learning_rate`, `add_decoupled_weight_decay`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from sgdx import _hyperparams, _tree
from sgdx._base import EmptyState, GradientTransformation, Params, PyTree, ScalarOrSchedule, Updates


def maximize() -> GradientTransformation:
    r"""Negates the updates, turning descent into ascent: :math:`g \leftarrow -g`.

    This is ``torch.optim.SGD(maximize=True)``'s first step, applied before weight decay.

    Returns:
      A :class:`~sgdx.GradientTransformation` with an :class:`~sgdx.EmptyState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> tx = sgdx.maximize()
      >>> updates, _ = tx.update(jnp.array([1.0, -2.0]), tx.init(None))
      >>> print(updates)
      [-1.  2.]
    """

    def init_fn(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update_fn(
        updates: Updates, state: EmptyState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, EmptyState]:
        del params, extra_args
        (updates,) = _tree.map_updates(lambda g: (-g,), updates, names=())
        return updates, state

    return GradientTransformation(init_fn, update_fn)


def add_decayed_weights(
    weight_decay: ArrayLike,
    mask: PyTree | Callable[[Params], PyTree] | None = None,
) -> GradientTransformation:
    r"""Adds coupled L2 weight decay: :math:`g \leftarrow g + \lambda p`.

    As in ``torch.optim.SGD``, the decay is added to the gradient (so it then flows through
    momentum) and is skipped entirely when :math:`\lambda = 0`, so a ``0 * inf`` never turns
    a gradient into ``NaN``. A Python ``0`` needs no ``params``.

    Args:
      weight_decay: :math:`\lambda \ge 0`. A float or a scalar array (traceable).
      mask: ``None`` (decay every parameter), a pytree of Python bools with the parameters'
        structure (``True`` where the decay applies), or a function ``params -> mask``.

    Returns:
      A :class:`~sgdx.GradientTransformation` with an :class:`~sgdx.EmptyState`. Its
      ``update`` needs ``params`` unless ``weight_decay`` is a Python ``0``.

    Raises:
      ValueError: ``Invalid weight_decay value: {weight_decay}`` for a negative value.

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> params = {"w": jnp.array([2.0]), "b": jnp.array([2.0])}
      >>> tx = sgdx.add_decayed_weights(0.5, mask={"w": True, "b": False})
      >>> grads = {"w": jnp.array([1.0]), "b": jnp.array([1.0])}
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> print(updates["w"], updates["b"])
      [2.] [1.]
    """
    _hyperparams.check_hyperparameter(weight_decay, "weight_decay")
    off = _hyperparams.is_off(weight_decay)

    def init_fn(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update_fn(
        updates: Updates, state: EmptyState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, EmptyState]:
        del extra_args
        if off:  # a Python 0: nothing to add, and no parameters needed (torch skips it too)
            return updates, state
        if params is None:
            raise ValueError(
                "add_decayed_weights needs the parameters: call update(updates, state, params). "
                "(A weight decay given as an array is traced and always applied; give "
                "weight_decay=0 or None to switch it off.)"
            )
        leaf_mask = mask(params) if callable(mask) else mask
        if leaf_mask is None:
            leaf_mask = jax.tree.map(lambda _: True, params)

        def decay(g: jax.Array, p: jax.Array, on: bool) -> tuple[Any, ...]:
            if not isinstance(on, bool):
                raise TypeError(
                    f"add_decayed_weights: mask leaves must be Python bools, got {on!r}."
                )
            if not on:
                return g, p, on
            wd = _hyperparams.cast(weight_decay, g)
            decayed = g + wd * jnp.asarray(p).astype(g.dtype)
            return _hyperparams.select(weight_decay != 0, decayed, g), p, on

        updates, _, _ = _tree.map_updates(
            decay, updates, params, leaf_mask, names=("parameters", "mask"), same_shape_as=0
        )
        return updates, state

    return GradientTransformation(init_fn, update_fn)


class ScaleByLearningRateState(NamedTuple):
    """State of :func:`scale_by_learning_rate` with a schedule."""

    count: jax.Array  # type: ignore[assignment]  # optax's name, shadowing tuple.count
    """Updates applied so far (int32, saturating); the schedule's argument."""


def scale_by_learning_rate(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    r"""Scales updates by the negative learning rate: :math:`u \leftarrow -\eta_t\, g`.

    :math:`\eta_t` is ``learning_rate`` itself, or ``learning_rate(t)`` for a schedule,
    where :math:`t` counts the updates already applied (0 on the first). Adding
    :math:`u` to the parameters is ``torch.optim.SGD``'s final step
    :math:`p \leftarrow p - \eta g`, with the learning rate read at every step: changing it
    changes the step size immediately, and nothing accumulated depends on it.

    Args:
      learning_rate: :math:`\eta \ge 0`: a float, a scalar (or one-element) array, which
        stays traceable, or a schedule ``count -> lr``.

    Returns:
      A :class:`~sgdx.GradientTransformation` with a :class:`ScaleByLearningRateState` (the
      schedule's count) for a schedule, an :class:`~sgdx.EmptyState` for a fixed learning
      rate (as optax's ``scale_by_schedule`` and ``scale``): a state holds one count, the
      one of the schedule it drives (under :func:`sgdx.inject_hyperparams`, the wrapper's).

    Raises:
      ValueError: ``Invalid learning rate: {lr}`` for a negative value; a non-scalar
        learning rate, or a schedule that returns one (at trace time).

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> tx = sgdx.scale_by_learning_rate(lambda count: jnp.where(count < 1, 0.5, 0.25))
      >>> state = tx.init(jnp.zeros(1))
      >>> for _ in range(2):
      ...     updates, state = tx.update(jnp.array([1.0]), state)
      ...     print(updates)
      [-0.5]
      [-0.25]
    """
    scalar = _hyperparams.check_learning_rate(learning_rate)

    kind = EmptyState if scalar is not None else ScaleByLearningRateState

    def init_fn(params: Params) -> ScaleByLearningRateState | EmptyState:
        _tree.check_inexact(params, "scale_by_learning_rate")
        if scalar is not None:
            return EmptyState()
        return ScaleByLearningRateState(count=jnp.zeros((), jnp.int32))

    def update_fn(
        updates: Updates,
        state: ScaleByLearningRateState | EmptyState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, ScaleByLearningRateState | EmptyState]:
        del extra_args
        _tree.check_state(state, kind, "scale_by_learning_rate")
        if isinstance(state, ScaleByLearningRateState):
            lr = _hyperparams.learning_rate_at(learning_rate, scalar, state.count)
            state = ScaleByLearningRateState(count=_tree.safe_increment(state.count))
        else:
            lr = jnp.asarray(scalar)
        # with params given, their tree is the reference the updates must match
        trees, names = ((params,), ("parameters",)) if params is not None else ((), ())
        negative: dict[Any, jax.Array] = {}  # -lr once per dtype, not once per leaf

        def scale(g: jax.Array, *p: jax.Array) -> tuple[jax.Array, ...]:
            if g.dtype not in negative:
                negative[g.dtype] = -_hyperparams.cast(lr, g)
            return (negative[g.dtype] * g, *p)

        updates, *_ = _tree.map_updates(
            scale,
            updates,
            *trees,
            names=names,
            same_shape_as=0 if trees else None,
        )
        return updates, state

    return GradientTransformation(init_fn, update_fn)


def add_decoupled_weight_decay(
    weight_decay: ArrayLike,
    learning_rate: ScalarOrSchedule,
    mask: PyTree | Callable[[Params], PyTree] | None = None,
) -> GradientTransformation:
    r"""Decoupled weight decay, added to the final update: :math:`u \leftarrow u - \eta_t
    \lambda p`.

    The decay acts on the parameters directly, outside momentum, scaled by the current
    learning rate: Keras's ``weight_decay`` (``p -= p * wd * lr`` before the step) and
    SGDW. Place it last, after the transform that produces the step. Compare
    :func:`add_decayed_weights`, torch's coupled L2, which is added to the gradient.

    Args:
      weight_decay: :math:`\lambda \ge 0`, a float or scalar array (traceable).
      learning_rate: :math:`\eta`, the optimizer's learning rate or schedule
        ``count -> lr``.
      mask: as in :func:`add_decayed_weights`.

    Returns:
      A :class:`~sgdx.GradientTransformation` with the state of
      :func:`scale_by_learning_rate` (the count of updates applied for a schedule). Its
      ``update`` needs ``params``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> params = jnp.array([2.0])
      >>> decay = sgdx.add_decoupled_weight_decay(0.25, 0.5)
      >>> tx = sgdx.chain(sgdx.scale_by_learning_rate(0.5), decay)
      >>> updates, _ = tx.update(jnp.array([1.0]), tx.init(params), params)
      >>> print(updates)  # -0.5 * 1 - 0.5 * 0.25 * 2
      [-0.75]
    """
    decay = add_decayed_weights(weight_decay, mask)
    scale = scale_by_learning_rate(learning_rate)

    def update_fn(
        updates: Updates,
        state: ScaleByLearningRateState | EmptyState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, ScaleByLearningRateState | EmptyState]:
        del extra_args
        zeros = jax.tree.map(
            lambda u: None if u is None else jnp.zeros_like(u), updates, is_leaf=lambda u: u is None
        )
        decays, _ = decay.update(zeros, EmptyState(), params)  # wd * p where the mask is on
        steps, state = scale.update(decays, state, params)  # -lr * wd * p, and the count
        (updates, _) = _tree.map_updates(
            lambda u, d: (u + d, d), updates, steps, names=("weight decays",), same_shape_as=0
        )
        return updates, state

    return GradientTransformation(scale.init, update_fn)
