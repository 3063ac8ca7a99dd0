"""`reduce_lr_on_plateau`: torch's ReduceLROnPlateau as a transform fed the loss."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from sgdx import _hyperparams, _tree
from sgdx._base import GradientTransformation, Params, Updates


class ReduceLROnPlateauState(NamedTuple):
    """State of :func:`reduce_lr_on_plateau` (torch's scheduler attributes)."""

    learning_rate: jax.Array
    """The current learning rate; updates are scaled by its ratio to the initial one."""
    best: jax.Array
    """The best metric so far."""
    num_bad_epochs: jax.Array
    """Epochs since the metric last improved."""
    cooldown_counter: jax.Array
    """Epochs of cooldown left after a reduction."""
    count: jax.Array  # type: ignore[assignment]  # optax's name, shadowing tuple.count
    """Updates applied so far (int32, saturating)."""
    value_sum: jax.Array
    """Sum of the values fed in the current epoch."""


def reduce_lr_on_plateau(
    learning_rate: float,
    *,
    mode: Literal["min", "max"] = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: Literal["rel", "abs"] = "rel",
    cooldown: int = 0,
    min_lr: float = 0.0,
    eps: float = 1e-8,
    steps_per_epoch: int = 1,
) -> GradientTransformation:
    r"""``torch.optim.lr_scheduler.ReduceLROnPlateau``: cut the learning rate when a metric
    stops improving.

    Place it after :func:`sgdx.sgd` (``learning_rate`` being sgd's) and pass the metric to
    every update: ``tx.update(grads, state, params, value=loss)``. The updates are scaled by
    :math:`\eta_{\text{now}} / \eta_0`, which for PyTorch's convention is exactly running
    with learning rate :math:`\eta_{\text{now}}`. Every ``steps_per_epoch`` updates, the
    mean of the values fed since the last epoch is one ``scheduler.step(metric)``:

    - the metric improves on ``best`` when it is below ``best * (1 - threshold)``
      (``mode="min"``, ``threshold_mode="rel"``; above ``best * (1 + threshold)`` for
      ``"max"``; ``best -/+ threshold`` for ``"abs"``), which resets ``num_bad_epochs``;
    - after more than ``patience`` epochs without improvement (cooldown epochs not
      counted), :math:`\eta \leftarrow \max(\eta \cdot` ``factor``, ``min_lr``:math:`)` if that
      changes it by more than ``eps``, and ``cooldown`` epochs of cooldown start.

    Args:
      learning_rate: the optimizer's initial learning rate :math:`\eta_0 > 0`.
      mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, eps: as torch's.
      steps_per_epoch: updates per scheduler step (1: step at every update).

    Returns:
      A :class:`~sgdx.GradientTransformation` with a :class:`ReduceLROnPlateauState`; its
      ``update`` needs ``value=``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> tx = sgdx.reduce_lr_on_plateau(0.5, factor=0.5, patience=1)
      >>> state = tx.init(jnp.zeros(1))
      >>> for loss in (3.0, 2.0, 2.0, 2.0):
      ...     _, state = tx.update(jnp.ones(1), state, value=loss)
      >>> float(state.learning_rate)
      0.25
    """
    _hyperparams.check_hyperparameter(learning_rate, "learning_rate")
    if factor >= 1.0:
        raise ValueError("Factor should be < 1.0.")
    if mode not in ("min", "max") or threshold_mode not in ("rel", "abs"):
        raise ValueError(
            f"mode must be 'min' or 'max' and threshold_mode 'rel' or 'abs', got "
            f"{mode!r} and {threshold_mode!r}."
        )
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch}.")
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    sign = 1.0 if mode == "min" else -1.0

    def improves(metric: jax.Array, best: jax.Array) -> jax.Array:
        if threshold_mode == "rel":
            return sign * metric < sign * best * (1 - sign * threshold)
        return sign * metric < sign * best - threshold

    def init_fn(params: Params) -> ReduceLROnPlateauState:
        del params
        zero = jnp.zeros((), jnp.int32)
        return ReduceLROnPlateauState(
            learning_rate=jnp.asarray(learning_rate, dtype),
            best=jnp.asarray(sign * jnp.inf, dtype),
            num_bad_epochs=zero,
            cooldown_counter=zero,
            count=zero,
            value_sum=jnp.zeros((), dtype),
        )

    def epoch_step(state: ReduceLROnPlateauState, metric: jax.Array) -> ReduceLROnPlateauState:
        better = improves(metric, state.best)
        best = jnp.where(better, metric, state.best)
        bad = jnp.where(better, 0, state.num_bad_epochs + 1)
        in_cooldown = state.cooldown_counter > 0
        cooldown_counter = jnp.where(
            in_cooldown, state.cooldown_counter - 1, state.cooldown_counter
        )
        bad = jnp.where(in_cooldown, 0, bad)
        reduce = bad > patience
        new_lr = jnp.maximum(state.learning_rate * factor, min_lr)
        lr = jnp.where(reduce & (state.learning_rate - new_lr > eps), new_lr, state.learning_rate)
        return state._replace(
            learning_rate=lr,
            best=best,
            num_bad_epochs=jnp.where(reduce, 0, bad),
            cooldown_counter=jnp.where(reduce, cooldown, cooldown_counter),
        )

    def update_fn(
        updates: Updates,
        state: ReduceLROnPlateauState,
        params: Params | None = None,
        *,
        value: Any = None,
        **extra_args: Any,
    ) -> tuple[Updates, ReduceLROnPlateauState]:
        del params, extra_args
        _tree.check_state(state, ReduceLROnPlateauState, "reduce_lr_on_plateau")
        if value is None:
            raise ValueError(
                "reduce_lr_on_plateau needs the metric: call update(updates, state, params, "
                "value=loss)."
            )
        if jnp.shape(value) != ():
            raise ValueError(f"value must be a scalar metric, got shape {jnp.shape(value)}.")
        scale = state.learning_rate / learning_rate
        (updates,) = _tree.map_updates(lambda u: (u * scale.astype(u.dtype),), updates, names=())
        value_sum = state.value_sum + jnp.asarray(value).astype(dtype)
        count = _tree.safe_increment(state.count)
        end_of_epoch = count % steps_per_epoch == 0
        stepped = epoch_step(state, value_sum / steps_per_epoch)
        new_state = jax.tree.map(lambda a, b: jnp.where(end_of_epoch, a, b), stepped, state)
        return updates, new_state._replace(
            count=count, value_sum=jnp.where(end_of_epoch, 0.0, value_sum).astype(dtype)
        )

    return GradientTransformation(init_fn, update_fn)
