"""Learning-rate schedules with ``torch.optim.lr_scheduler`` semantics, as pure functions.

Each returns a schedule ``count -> lr``, where ``count`` is the number of updates already
applied, equal to torch's ``last_epoch`` when the torch scheduler is stepped after every
``optimizer.step()``. Pass it as ``sgdx.sgd(learning_rate=...)``. Each matches the sequence
of the torch scheduler it is named after (to float64 rounding: torch computes some of them
recursively, these in closed form).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sgdx import _hyperparams
from sgdx._base import Schedule

__all__ = ["cosine_annealing_lr", "exponential_lr", "multistep_lr", "step_lr"]


def _float(count: jax.Array) -> jax.Array:
    return jnp.asarray(count).astype(jax.dtypes.canonicalize_dtype(jnp.float64))


def _check(base_lr: float, gamma: float | None = None) -> None:
    _hyperparams.check_hyperparameter(base_lr, "base_lr", "Invalid learning rate: {}")
    if gamma is not None:
        _hyperparams.check_hyperparameter(gamma, "gamma", "Invalid gamma value: {}")


def step_lr(base_lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    r"""``StepLR``: :math:`\eta_t = \eta_0 \gamma^{\lfloor t / s \rfloor}`.

    Examples:
      >>> from sgdx import schedules
      >>> schedule = schedules.step_lr(1.0, step_size=2, gamma=0.5)
      >>> [float(schedule(t)) for t in range(5)]
      [1.0, 1.0, 0.5, 0.5, 0.25]
    """
    _check(base_lr, gamma)
    if step_size < 1:
        raise ValueError(f"step_size must be a positive integer, got {step_size}.")
    return lambda count: base_lr * gamma ** _float(jnp.asarray(count) // step_size)


def multistep_lr(base_lr: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    r"""``MultiStepLR``: :math:`\eta_t = \eta_0 \gamma^{\#\{m \in \text{milestones}: m \le t\}}`.

    Examples:
      >>> from sgdx import schedules
      >>> schedule = schedules.multistep_lr(1.0, milestones=[1, 3], gamma=0.5)
      >>> [float(schedule(t)) for t in range(4)]
      [1.0, 0.5, 0.5, 0.25]
    """
    _check(base_lr, gamma)
    marks = np.sort(np.asarray(milestones, dtype=np.int32))

    def schedule(count: jax.Array) -> jax.Array:
        passed = jnp.sum(jnp.asarray(marks) <= jnp.asarray(count))
        return base_lr * gamma ** _float(passed)

    return schedule


def exponential_lr(base_lr: float, gamma: float) -> Schedule:
    r"""``ExponentialLR``: :math:`\eta_t = \eta_0 \gamma^t`.

    Examples:
      >>> from sgdx import schedules
      >>> [float(schedules.exponential_lr(1.0, 0.5)(t)) for t in range(3)]
      [1.0, 0.5, 0.25]
    """
    _check(base_lr, gamma)
    return lambda count: base_lr * gamma ** _float(count)


def cosine_annealing_lr(base_lr: float, t_max: int, eta_min: float = 0.0) -> Schedule:
    r"""``CosineAnnealingLR``: :math:`\eta_t = \eta_{\min} + \tfrac12 (\eta_0 - \eta_{\min})
    (1 + \cos(\pi t / T_{\max}))`, continuing periodically past :math:`T_{\max}` as torch's does.

    Examples:
      >>> from sgdx import schedules
      >>> [round(float(schedules.cosine_annealing_lr(1.0, t_max=2)(t)), 6) for t in range(4)]
      [1.0, 0.5, 0.0, 0.5]
    """
    _check(base_lr)
    if t_max < 1:
        raise ValueError(f"t_max must be a positive integer, got {t_max}.")

    def schedule(count: jax.Array) -> jax.Array:
        phase = jnp.pi * _float(count) / t_max
        return eta_min + (base_lr - eta_min) * (1 + jnp.cos(phase)) / 2

    return schedule
