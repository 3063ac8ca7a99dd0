"""`reduce_lr_on_plateau`: torch's ReduceLROnPlateau, stepped with a metric between updates."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from sgdx import _hyperparams
from sgdx._groups import ParamGroupsState, groups_of
from sgdx._inject import InjectHyperparamsState

LearningRateState = InjectHyperparamsState | ParamGroupsState


class ReduceLROnPlateauState(NamedTuple):
    """State of :func:`reduce_lr_on_plateau`: torch's scheduler attributes of the same names.

    Stepped outside ``jax.jit`` (as torch's scheduler is, between updates) it is host state
    in NumPy, ``best`` a float64 as torch's Python float, whether or not JAX's x64 is on;
    stepped inside a jit, JAX arrays (``best`` in JAX's default float)."""

    best: jax.Array | np.ndarray
    """The best metric so far (``inf`` for ``mode="min"`` before the first step)."""
    num_bad_epochs: jax.Array | np.ndarray
    """Steps since the metric last improved (int32)."""
    cooldown_counter: jax.Array | np.ndarray
    """Steps of cooldown left after a reduction (int32)."""
    last_epoch: jax.Array | np.ndarray
    """Steps taken (int32)."""


class ReduceLROnPlateau(NamedTuple):
    """A metric-driven learning-rate scheduler: ``init()`` and
    ``step(state, opt_state, metric) -> (state, opt_state)``."""

    init: Callable[[], ReduceLROnPlateauState]
    step: Callable[
        [ReduceLROnPlateauState, LearningRateState, ArrayLike],
        tuple[ReduceLROnPlateauState, LearningRateState],
    ]


def _metric(metric: Any) -> ArrayLike:
    """The metric as torch's ``float(metrics)`` reads it: a string is parsed, a number or
    0-d real array (traced or not) is taken as it is."""
    if isinstance(metric, str):
        try:
            return float(metric)
        except ValueError:
            raise ValueError(
                f"reduce_lr_on_plateau.step: the metric {metric!r} is not a number; pass the "
                "monitored value (e.g. the validation loss) as a float or a 0-d array."
            ) from None
    if isinstance(metric, complex) or not _hyperparams.is_number(metric):
        raise TypeError(
            f"reduce_lr_on_plateau.step: the metric must be a real number (the monitored "
            f"value, e.g. the validation loss) as a float or a 0-d array, got "
            f"{type(metric).__name__} {metric!r:.60}."
        )
    if not _hyperparams.is_real_dtype(jnp.result_type(metric)) and not isinstance(metric, bool):
        raise TypeError(
            f"reduce_lr_on_plateau.step: the metric must be real, got dtype "
            f"{jnp.result_type(metric)}."
        )
    if jnp.shape(metric) != ():
        raise ValueError(
            f"reduce_lr_on_plateau.step: the metric must be a scalar, got shape "
            f"{jnp.shape(metric)}; reduce it first (e.g. its mean over the validation set)."
        )
    value: ArrayLike = metric
    return value


def reduce_lr_on_plateau(
    *,
    mode: Literal["min", "max"] = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: Literal["rel", "abs"] = "rel",
    cooldown: int = 0,
    min_lr: float | Mapping[str, float] = 0.0,
    eps: float = 1e-8,
) -> ReduceLROnPlateau:
    r"""``torch.optim.lr_scheduler.ReduceLROnPlateau``: cut the learning rate when a metric
    stops improving.

    As in torch, the scheduler is stepped with a metric between updates, usually once per
    epoch with the validation loss: ``plateau_state, opt_state = plateau.step(plateau_state,
    opt_state, val_loss)`` is ``scheduler.step(val_loss)``. It rewrites the learning rate
    held in the optimizer state (:func:`sgdx.inject_hyperparams` or :func:`sgdx.param_groups`,
    every group), so the next update uses it and a checkpoint holds it, as torch's
    ``param_groups[i]["lr"]`` does. Per step:

    - the metric improves on ``best`` when it is below ``best * (1 - threshold)``
      (``mode="min"``, ``threshold_mode="rel"``; above ``best * (1 + threshold)`` for
      ``"max"``; ``best -/+ threshold`` for ``"abs"``), which resets ``num_bad_epochs``;
    - during cooldown ``num_bad_epochs`` stays 0;
    - after more than ``patience`` steps without improvement, each group's
      :math:`\eta \leftarrow \max(\eta \cdot` ``factor``, ``min_lr``:math:`)` if that changes
      it by more than ``eps``, and ``cooldown`` steps of cooldown start.

    Args:
      mode, factor, patience, threshold, threshold_mode, cooldown, eps: as torch's.
      min_lr: the floor, one for all groups or per group label.

    Returns:
      A :class:`ReduceLROnPlateau`; ``step`` is pure and can be jitted. Stepped outside
      ``jax.jit``, as torch's scheduler is, it compares metrics and keeps ``best`` in float64
      on the host, torch's Python floats, whether or not JAX's x64 is on; inside a jit it
      compares in JAX's default float (float32 with x64 off).

    Raises:
      ValueError: torch's ``Factor should be < 1.0.``, an unknown mode, a negative patience.

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> tx = sgdx.inject_hyperparams(sgdx.sgd)(0.5)
      >>> opt_state = tx.init(jnp.zeros(1))
      >>> plateau = sgdx.reduce_lr_on_plateau(factor=0.5, patience=1)
      >>> state = plateau.init()
      >>> for val_loss in (3.0, 2.0, 2.0, 2.0):
      ...     state, opt_state = plateau.step(state, opt_state, val_loss)
      >>> float(sgdx.get_hyperparams(opt_state)["learning_rate"])
      0.25
    """
    for name, value in (("factor", factor), ("threshold", threshold), ("eps", eps)):
        _hyperparams.check_hyperparameter(value, name)
        if _hyperparams.concrete(value) is None:
            raise TypeError(
                f"reduce_lr_on_plateau: {name} must be a concrete number (a Python float), got "
                f"a traced {jnp.result_type(value)} value; the scheduler's constants are "
                "fixed when it is built: build it outside jax.jit."
            )
    if factor >= 1.0:
        raise ValueError("Factor should be < 1.0.")
    if mode not in ("min", "max") or threshold_mode not in ("rel", "abs"):
        raise ValueError(
            f"mode must be 'min' or 'max' and threshold_mode 'rel' or 'abs', got "
            f"{mode!r} and {threshold_mode!r}."
        )
    for name, count in (("patience", patience), ("cooldown", cooldown)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {count!r}.")
    for value in min_lr.values() if isinstance(min_lr, Mapping) else (min_lr,):
        _hyperparams.check_hyperparameter(value, "min_lr")
    factor, threshold, eps = float(factor), float(threshold), float(eps)  # Python constants
    sign = 1.0 if mode == "min" else -1.0

    def improves(metric: Any, best: Any) -> Any:  # NumPy or JAX arrays
        if threshold_mode == "rel":
            return sign * metric < sign * best * (1 - sign * threshold)
        return sign * metric < sign * best - threshold

    def init_fn() -> ReduceLROnPlateauState:
        zero = np.zeros((), np.int32)
        return ReduceLROnPlateauState(np.asarray(sign * np.inf), zero, zero, zero)

    def floor(label: str | None) -> float:
        if not isinstance(min_lr, Mapping):
            return float(min_lr)
        if label is None or label not in min_lr:
            raise KeyError(f"reduce_lr_on_plateau: min_lr has no entry for group {label!r}.")
        return float(min_lr[label])

    def step_fn(
        state: ReduceLROnPlateauState, opt_state: LearningRateState, metric: ArrayLike
    ) -> tuple[ReduceLROnPlateauState, LearningRateState]:
        metric = _metric(metric)
        groups = groups_of(
            opt_state, "reduce_lr_on_plateau changes the learning rate held in the optimizer state"
        )
        # outside jax.jit, torch's Python floats: float64 on the host, x64 on or off
        host = not any(isinstance(x, jax.core.Tracer) for x in (metric, *state))
        xp: Any = np if host else jnp
        state = ReduceLROnPlateauState(*(xp.asarray(x) for x in state))
        value = xp.asarray(metric, dtype=np.float64 if host else state.best.dtype)
        better = improves(value, state.best.astype(value.dtype))
        best = xp.where(better, value, state.best)
        bad = xp.where(better, 0, state.num_bad_epochs + 1)
        in_cooldown = state.cooldown_counter > 0
        cooldown_counter = xp.where(in_cooldown, state.cooldown_counter - 1, 0)
        bad = xp.where(in_cooldown, 0, bad)
        reduce = bad > patience
        new_groups: dict[Any, InjectHyperparamsState] = {}
        for label, group in groups.items():
            old = group.hyperparams["learning_rate"]
            new = jnp.maximum(old * factor, jnp.asarray(floor(label), old.dtype))
            lr = jnp.where(reduce & (old - new > eps), new, old)
            new_groups[label] = group._replace(
                hyperparams={**group.hyperparams, "learning_rate": lr}
            )
        new_state = ReduceLROnPlateauState(
            best=best,
            num_bad_epochs=xp.where(reduce, 0, bad).astype(np.int32),
            cooldown_counter=xp.where(reduce, cooldown, cooldown_counter).astype(np.int32),
            last_epoch=(state.last_epoch + 1).astype(np.int32),
        )
        if isinstance(opt_state, ParamGroupsState):
            return new_state, opt_state._replace(groups=new_groups)
        return new_state, new_groups[None]

    return ReduceLROnPlateau(init_fn, step_fn)
