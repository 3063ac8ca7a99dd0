"""Learning-rate schedules with ``torch.optim.lr_scheduler`` semantics, as pure functions.

Each returns a schedule ``count -> lr``, where ``count`` is the number of updates already
applied, equal to torch's ``last_epoch`` when the torch scheduler is stepped after every
``optimizer.step()``. Pass it as ``sgdx.sgd(learning_rate=...)``. Each matches the sequence
of the torch scheduler it is named after (to float64 rounding: torch computes some of them
recursively, these in closed form). With x64 off, bounded and periodic schedules and powers
of ``gamma`` are evaluated from float64 tables, so each float32 value is float32(torch's
float64 value) to 1 ulp.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from sgdx import _hyperparams
from sgdx._base import Schedule

__all__ = [
    "chained",
    "constant_lr",
    "cosine_annealing_lr",
    "cosine_annealing_warm_restarts",
    "cyclic_lr",
    "cyclic_momentum",
    "exponential_lr",
    "lambda_lr",
    "linear_lr",
    "multiplicative_lr",
    "multistep_lr",
    "one_cycle_lr",
    "one_cycle_momentum",
    "per_epoch",
    "polynomial_lr",
    "sequential",
    "step_lr",
    "warmup",
    "warmup_from",
]


def _float(count: jax.Array) -> jax.Array:
    return jnp.asarray(count).astype(jax.dtypes.canonicalize_dtype(jnp.float64))


# With x64 off (JAX's default) a float32 evaluation of these formulas drifts from torch's
# float64 values as the count grows (a 90k-step cosine: thousands of steps off by more than
# 1e-6, the last ones by orders of magnitude). There, every schedule below that is bounded
# (or periodic) reads its values from a table of the float64 formula rounded once to
# float32, and powers gamma ** t are taken in float32 pairs from float64 tables: each value
# is float32(torch's float64 value) to 1 ulp. Longer tables than this are not built (the
# float32 formula runs instead).
_TABLE_LIMIT = 1 << 20


def _float32_run() -> bool:
    return _hyperparams.default_float() == np.float32


def _tabulated(
    formula: Schedule,
    exact: Callable[[np.ndarray], np.ndarray],
    length: int,
    period: int | None = None,
    constant_after: bool = True,
) -> Schedule:
    """``formula``, or with x64 off ``exact`` (the same schedule in numpy float64) rounded
    once to float32 and looked up: over counts ``[0, length)``, the count taken modulo
    ``period`` (``= length``) for a periodic schedule, else clamped to the last entry for a
    schedule ``constant_after`` it, or handed to ``formula`` past the table."""

    @functools.cache
    def table() -> np.ndarray:
        return np.asarray(exact(np.arange(length, dtype=np.float64)), np.float32)

    def schedule(count: jax.Array) -> jax.Array:
        if not _float32_run() or length > _TABLE_LIMIT:
            return jnp.asarray(formula(count))
        t = jnp.asarray(count, jnp.int32)
        index = t % period if period else jnp.clip(t, 0, length - 1)
        value = jnp.asarray(table())[index]
        if period or constant_after:
            return value
        return jnp.where(t < length, value, jnp.asarray(formula(count)).astype(value.dtype))

    return schedule


def _two_product(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``a * b`` as the float32 pair ``(p, e)`` with ``p + e`` exact (Dekker's product)."""

    def split(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = np.float32(4097.0) * x  # 2**12 + 1: float32's 24-bit significand in halves
        hi = c - (c - x)
        return hi, x - hi

    p = a * b
    (ah, al), (bh, bl) = split(a), split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _power(base_lr: float, gamma: float, exponent: jax.Array) -> jax.Array:
    """``base_lr * gamma ** exponent``; with x64 off, from float64 tables of
    ``base_lr * gamma ** (1024 i)`` and ``gamma ** j`` held as float32 pairs and multiplied
    as pairs, then rounded once (exponents below 2**20; the float32 formula above)."""
    if not _float32_run():
        return base_lr * gamma ** _float(exponent)
    k = jnp.asarray(exponent, jnp.int32)
    steps = np.arange(1024, dtype=np.float64)
    pairs = []
    for values in (base_lr * gamma ** (1024 * steps), gamma**steps):
        hi = values.astype(np.float32)
        pairs.append((hi, (values - hi).astype(np.float32)))
    (high_hi, high_lo), (low_hi, low_lo) = pairs
    i, j = jnp.clip(k // 1024, 0, 1023), k % 1024
    a_hi, a_lo = jnp.asarray(high_hi)[i], jnp.asarray(high_lo)[i]
    b_hi, b_lo = jnp.asarray(low_hi)[j], jnp.asarray(low_lo)[j]
    p, e = _two_product(a_hi, b_hi)
    exact = p + (e + (a_hi * b_lo + a_lo * b_hi))
    return jnp.where(k < _TABLE_LIMIT, exact, base_lr * gamma ** _float(exponent))


def _count(value: Any, name: str, minimum: int = 1) -> None:
    """Raises unless ``value`` is a Python int of at least ``minimum`` (a count of steps)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer number of steps, got {value!r}.")
    if value < minimum:
        raise ValueError(
            f"{name} must be {'a positive' if minimum else 'a non-negative'} integer, got {value}."
        )


def _check(base_lr: float, *gamma: float) -> tuple[float, ...]:
    """Validates the schedule's constants and returns them as Python floats (so that a
    float32 array constant does not meet float64 arithmetic under strict promotion)."""
    _hyperparams.check_hyperparameter(base_lr, "base_lr")
    for value in gamma:
        _hyperparams.check_hyperparameter(value, "gamma")
    return tuple(float(v) for v in (base_lr, *gamma))


def step_lr(base_lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    r"""``StepLR``: :math:`\eta_t = \eta_0 \gamma^{\lfloor t / s \rfloor}`.

    Examples:
      >>> from sgdx import schedules
      >>> schedule = schedules.step_lr(1.0, step_size=2, gamma=0.5)
      >>> [float(schedule(t)) for t in range(5)]
      [1.0, 1.0, 0.5, 0.5, 0.25]
    """
    base_lr, gamma = _check(base_lr, gamma)
    _count(step_size, "step_size")
    return lambda count: _power(base_lr, gamma, jnp.asarray(count) // step_size)


def multistep_lr(base_lr: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    r"""``MultiStepLR``: :math:`\eta_t = \eta_0 \gamma^{\#\{m \in \text{milestones}: m \le t\}}`.

    Examples:
      >>> from sgdx import schedules
      >>> schedule = schedules.multistep_lr(1.0, milestones=[1, 3], gamma=0.5)
      >>> [float(schedule(t)) for t in range(4)]
      [1.0, 0.5, 0.5, 0.25]
    """
    base_lr, gamma = _check(base_lr, gamma)
    if isinstance(milestones, str | bytes) or not isinstance(milestones, Sequence):
        raise TypeError(f"milestones must be a sequence of step counts, got {milestones!r}.")
    for milestone in milestones:
        _count(milestone, "each milestone", minimum=0)
    marks = np.sort(np.asarray(milestones, dtype=np.int32))

    def schedule(count: jax.Array) -> jax.Array:
        passed = jnp.sum(jnp.asarray(marks) <= jnp.asarray(count))
        return _power(base_lr, gamma, passed)

    return schedule


def exponential_lr(base_lr: float, gamma: float) -> Schedule:
    r"""``ExponentialLR``: :math:`\eta_t = \eta_0 \gamma^t`.

    Examples:
      >>> from sgdx import schedules
      >>> [float(schedules.exponential_lr(1.0, 0.5)(t)) for t in range(3)]
      [1.0, 0.5, 0.25]
    """
    base_lr, gamma = _check(base_lr, gamma)
    return lambda count: _power(base_lr, gamma, count)


def cosine_annealing_lr(base_lr: float, t_max: int, eta_min: float = 0.0) -> Schedule:
    r"""``CosineAnnealingLR``: :math:`\eta_t = \eta_{\min} + \tfrac12 (\eta_0 - \eta_{\min})
    (1 + \cos(\pi t / T_{\max}))`, continuing periodically past :math:`T_{\max}` as torch's does.

    Examples:
      >>> from sgdx import schedules
      >>> [round(float(schedules.cosine_annealing_lr(1.0, t_max=2)(t)), 6) for t in range(4)]
      [1.0, 0.5, 0.0, 0.5]
    """
    (base_lr,) = _check(base_lr)
    _count(t_max, "t_max")
    _hyperparams.check_hyperparameter(eta_min, "eta_min")
    eta_min = float(eta_min)

    def schedule(count: jax.Array) -> jax.Array:
        phase = jnp.pi * _float(count) / t_max
        return eta_min + (base_lr - eta_min) * (1 + jnp.cos(phase)) / 2

    def exact(t: np.ndarray) -> np.ndarray:
        return eta_min + (base_lr - eta_min) * (1 + np.cos(np.pi * t / t_max)) / 2

    return _tabulated(schedule, exact, 2 * t_max, period=2 * t_max)


def constant_lr(base_lr: float, factor: float = 1 / 3, total_iters: int = 5) -> Schedule:
    r"""``ConstantLR``: :math:`\eta_0 \cdot` ``factor`` for :math:`t <` ``total_iters``, then
    :math:`\eta_0`. With ``total_iters=0`` the factor is applied at construction and never
    undone, as torch's ``ConstantLR(total_iters=0)`` stepped after each update does:
    :math:`\eta_0 \cdot` ``factor`` throughout.

    Examples:
      >>> from sgdx import schedules
      >>> [float(schedules.constant_lr(1.0, 0.5, total_iters=2)(t)) for t in range(3)]
      [0.5, 0.5, 1.0]
    """
    (base_lr,) = _check(base_lr)
    _hyperparams.check_hyperparameter(factor, "factor")
    factor = float(factor)
    _count(total_iters, "total_iters", minimum=0)
    if not 0 <= factor <= 1:
        raise ValueError("Constant multiplicative factor expected to be between 0 and 1.")
    until = total_iters or np.iinfo(np.int32).max  # total_iters=0: never undone, as torch's
    return lambda count: jnp.where(jnp.asarray(count) < until, base_lr * factor, base_lr)


def linear_lr(
    base_lr: float, start_factor: float = 1 / 3, end_factor: float = 1.0, total_iters: int = 5
) -> Schedule:
    r"""``LinearLR``: the factor moves linearly from ``start_factor`` to ``end_factor`` over
    ``total_iters`` updates, then stays.

    Examples:
      >>> from sgdx import schedules
      >>> [float(schedules.linear_lr(1.0, 0.5, 1.0, total_iters=2)(t)) for t in range(4)]
      [0.5, 0.75, 1.0, 1.0]
    """
    (base_lr,) = _check(base_lr)
    _hyperparams.check_hyperparameter(start_factor, "start_factor")
    _hyperparams.check_hyperparameter(end_factor, "end_factor")
    start_factor, end_factor = float(start_factor), float(end_factor)
    _count(total_iters, "total_iters")
    if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
        raise ValueError(
            "Starting multiplicative factor expected to be greater than 0 and less or equal "
            "to 1, and the ending factor between 0 and 1."
        )

    def schedule(count: jax.Array) -> jax.Array:
        progress = jnp.minimum(_float(count), total_iters) / total_iters
        return base_lr * (start_factor + (end_factor - start_factor) * progress)

    def exact(t: np.ndarray) -> np.ndarray:
        progress = np.minimum(t, total_iters) / total_iters
        return np.asarray(base_lr * (start_factor + (end_factor - start_factor) * progress))

    return _tabulated(schedule, exact, total_iters + 1)


def polynomial_lr(base_lr: float, total_iters: int = 5, power: float = 1.0) -> Schedule:
    r"""``PolynomialLR``: :math:`\eta_0 (1 - \min(t, T) / T)^{p}`.

    Examples:
      >>> from sgdx import schedules
      >>> [float(schedules.polynomial_lr(1.0, total_iters=2, power=2.0)(t)) for t in range(3)]
      [1.0, 0.25, 0.0]
    """
    (base_lr,) = _check(base_lr)
    _count(total_iters, "total_iters")
    _hyperparams.check_hyperparameter(power, "power")
    power = float(power)

    def schedule(count: jax.Array) -> jax.Array:
        return base_lr * (1 - jnp.minimum(_float(count), total_iters) / total_iters) ** power

    def exact(t: np.ndarray) -> np.ndarray:
        return np.asarray(base_lr * (1 - np.minimum(t, total_iters) / total_iters) ** power)

    return _tabulated(schedule, exact, total_iters + 1)


# how a run steps CosineAnnealingWarmRestarts after batch i: epoch + i / n, or epoch + (i + 1) / n
FractionalEpochs = Literal["i", "i + 1"]
_EPOCH_OFFSET: dict[str, int] = {"i": 0, "i + 1": 1}  # each convention's batch offset


def _fractional_epoch(
    k: Any, steps_per_epoch: int, fractional_epochs: FractionalEpochs, real: Any = float
) -> Any:
    """The epoch a run passes to ``scheduler.step`` after update ``k`` (from 0): ``epoch + i /
    n`` or ``epoch + (i + 1) / n`` for batch ``i`` of ``n``, as the run's Python float (or in
    ``real``'s floats, for arrays of updates)."""
    n = steps_per_epoch
    return real(k // n) + real(k % n + _EPOCH_OFFSET[fractional_epochs]) / n


def cosine_annealing_warm_restarts(
    base_lr: float,
    t_0: int,
    t_mult: int = 1,
    eta_min: float = 0.0,
    steps_per_epoch: int | None = None,
    fractional_epochs: FractionalEpochs = "i",
) -> Schedule:
    r"""``CosineAnnealingWarmRestarts``: cosine annealing restarted after :math:`T_0`,
    :math:`T_0 T_{mult}`, :math:`T_0 T_{mult}^2`, ... scheduler steps:
    :math:`\eta_{min} + (\eta_0 - \eta_{min})(1 + \cos(\pi T_{cur} / T_i)) / 2`.

    With ``steps_per_epoch`` (:math:`n`) the schedule is over the updates of a run that steps
    the scheduler after every update with a fractional epoch: ``scheduler.step(epoch + i /
    n)`` (torch's documented per-batch use, ``fractional_epochs="i"``) or ``scheduler.step(
    epoch + (i + 1) / n)`` (``"i + 1"``), with :math:`i` the update's batch in its epoch.
    Update :math:`c \ge 1` takes the rate at the epoch given after update :math:`c - 1`
    (update 0 the rate at epoch 0), with :math:`T_{cur}` and :math:`T_i` computed from it as
    torch computes them, including the restarts that torch's ``math.log`` places one cycle
    late (where the epoch is exactly a restart).

    Examples:
      >>> from sgdx import schedules
      >>> schedule = schedules.cosine_annealing_warm_restarts(1.0, t_0=2)
      >>> [round(float(schedule(t)), 6) for t in range(4)]
      [1.0, 0.5, 1.0, 0.5]
      >>> per_batch = schedules.cosine_annealing_warm_restarts(1.0, t_0=1, steps_per_epoch=2)
      >>> [round(float(per_batch(c)), 6) for c in range(5)]  # epochs 0, 0, 0.5, 1, 1.5
      [1.0, 1.0, 0.5, 1.0, 0.5]
    """
    (base_lr,) = _check(base_lr)
    _count(t_0, "t_0")
    _count(t_mult, "t_mult")
    _hyperparams.check_hyperparameter(eta_min, "eta_min")
    eta_min = float(eta_min)
    if steps_per_epoch is not None:
        _count(steps_per_epoch, "steps_per_epoch")
        if fractional_epochs not in _EPOCH_OFFSET:
            raise ValueError(
                f'fractional_epochs must be "i" or "i + 1" (the scheduler stepped with epoch + '
                f"i / steps_per_epoch or epoch + (i + 1) / steps_per_epoch after batch i), got "
                f"{fractional_epochs!r}."
            )
        return _fractional_warm_restarts(
            base_lr, t_0, t_mult, eta_min, steps_per_epoch, fractional_epochs
        )

    def schedule(count: jax.Array) -> jax.Array:
        t = jnp.asarray(count, jnp.int32)

        def next_cycle(cycle: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            start, length = cycle
            return start + length, length * t_mult

        start, length = jax.lax.while_loop(
            lambda cycle: t >= cycle[0] + cycle[1], next_cycle, (jnp.int32(0), jnp.int32(t_0))
        )
        phase = jnp.pi * _float(t - start) / _float(length)
        return eta_min + (base_lr - eta_min) * (1 + jnp.cos(phase)) / 2

    def exact(t: np.ndarray) -> np.ndarray:
        start, length = np.zeros_like(t), np.full_like(t, t_0)
        while np.any(late := t >= start + length):
            start, length = (
                np.where(late, start + length, start),
                np.where(late, length * t_mult, length),
            )
        return np.asarray(
            eta_min + (base_lr - eta_min) * (1 + np.cos(np.pi * (t - start) / length)) / 2
        )

    if t_mult == 1:
        return _tabulated(schedule, exact, t_0, period=t_0)
    return _tabulated(schedule, exact, _TABLE_LIMIT, constant_after=False)  # growing cycles


def _fractional_warm_restarts(
    base_lr: float,
    t_0: int,
    t_mult: int,
    eta_min: float,
    steps_per_epoch: int,
    fractional_epochs: FractionalEpochs,
) -> Schedule:
    """:func:`cosine_annealing_warm_restarts` over updates, its scheduler stepped after
    update ``k`` (from 0) with the epoch :func:`_fractional_epoch` gives."""
    n = steps_per_epoch
    # torch's step(epoch) finds the cycle as int(math.log(epoch / T_0 * (T_mult - 1) + 1,
    # T_mult)): each cycle's start and length, and the cycle that formula gives at the start
    # itself (math.log(243, 3) is 4.999999999999999: that restart comes a cycle late)
    starts, lengths, at_start = [0.0], [float(t_0)], [0]
    while t_mult > 1 and starts[-1] < 2.0**40:
        m = len(starts)
        starts.append(t_0 * (t_mult**m - 1) / (t_mult - 1))
        lengths.append(float(t_0 * t_mult**m))
        at_start.append(int(math.log(starts[-1] / t_0 * (t_mult - 1) + 1, t_mult)))

    def rate(k: Any, xp: Any) -> Any:
        real = _float if xp is jnp else (lambda a: a.astype(np.float64))
        x = _fractional_epoch(k, n, fractional_epochs, real)
        if t_mult == 1:
            t_cur, t_i = xp.remainder(x, float(t_0)), float(t_0)
        else:
            start = xp.asarray(starts)
            cycle = xp.searchsorted(start, x, side="right") - 1
            late = xp.asarray(at_start).astype(cycle.dtype)[cycle]
            cycle = xp.where(x == start[cycle], late, cycle)
            t_cur, t_i = x - start[cycle], xp.asarray(lengths)[cycle]
        return eta_min + (base_lr - eta_min) * (1 + xp.cos(xp.pi * t_cur / t_i)) / 2

    def exact(k: np.ndarray) -> np.ndarray:
        return np.asarray(rate(k.astype(np.int64), np), np.float64)

    # the rate after update k repeats every T_0 epochs while cycles keep their length
    period = t_0 * n if t_mult == 1 else None
    after = _tabulated(
        lambda k: rate(jnp.asarray(k, jnp.int32), jnp),
        exact,
        period or _TABLE_LIMIT,
        period=period,
        constant_after=False,
    )
    first = eta_min + (base_lr - eta_min) * (1 + math.cos(0.0)) / 2  # epoch 0, as built

    def schedule(count: jax.Array) -> jax.Array:
        c = jnp.asarray(count, jnp.int32)
        return jnp.where(c == 0, first, after(jnp.maximum(c - 1, 0)))

    return schedule


Anneal = Literal["cos", "linear"]


def _one_cycle(
    t: Any,
    total_steps: int,
    pct_start: float,
    three_phase: bool,
    anneal: Anneal,
    values: tuple[float, float, float],
    xp: Any = jnp,
) -> Any:
    """OneCycle's phases over ``values = (start, peak, end)`` (as torch's get_lr), at float
    counts ``t``, in ``xp`` (``jax.numpy``, or ``numpy`` for the float64 table)."""
    start, peak, end = values
    if three_phase:
        phases = [
            (float(pct_start * total_steps) - 1, start, peak),
            (float(2 * pct_start * total_steps) - 2, peak, start),
            (total_steps - 1.0, start, end),
        ]
    else:
        phases = [(float(pct_start * total_steps) - 1, start, peak), (total_steps - 1.0, peak, end)]
    value = xp.zeros_like(t)
    for i, (finish, a, b) in reversed(list(enumerate(phases))):
        begin = phases[i - 1][0] if i else 0.0
        pct = (t - begin) / (finish - begin)
        annealed = (
            b + (a - b) / 2 * (xp.cos(xp.pi * pct) + 1) if anneal == "cos" else (b - a) * pct + a
        )
        value = annealed if i == len(phases) - 1 else xp.where(t <= finish, annealed, value)
    return value


def _one_cycle_schedule(
    total_steps: int,
    pct_start: float,
    three_phase: bool,
    anneal: Anneal,
    values: tuple[float, float, float],
) -> Schedule:
    options = (total_steps, pct_start, three_phase, anneal, values)
    values_at = _tabulated(
        lambda count: _one_cycle(_float(count), *options),
        lambda t: _one_cycle(t, *options, xp=np),
        total_steps + 1,  # torch gives a value at count total_steps, raising after it
    )

    def schedule(count: jax.Array) -> jax.Array:
        # torch raises past the end; a traced count cannot, so it holds the final value
        if not isinstance(count, jax.core.Tracer) and int(count) > total_steps:
            raise ValueError(
                f"Tried to step {int(count)} times. The specified number of total steps is "
                f"{total_steps}"
            )
        return jnp.asarray(
            values_at(jnp.where(jnp.asarray(count) > total_steps, total_steps - 1, count))
        )

    return schedule


def one_cycle_lr(
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: Anneal = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> Schedule:
    r"""``OneCycleLR``'s learning rate: from ``max_lr / div_factor`` up to ``max_lr`` over
    ``pct_start`` of ``total_steps``, then down to ``max_lr / div_factor / final_div_factor``.

    torch's OneCycleLR also cycles momentum by default; pass :func:`one_cycle_momentum` as
    the momentum of ``sgdx.inject_hyperparams(sgdx.sgd)`` for that. Past ``total_steps``
    torch raises; so does this for a concrete count (torch's message). Under ``jax.jit``,
    where it cannot raise, a count past ``total_steps`` holds the final value, the
    learning rate of the last of the ``total_steps`` updates (its momentum, for
    :func:`one_cycle_momentum`).

    Examples:
      >>> from sgdx import schedules
      >>> schedule = schedules.one_cycle_lr(1.0, total_steps=10, anneal_strategy="linear")
      >>> [round(float(schedule(t)), 4) for t in (0, 2, 9)]
      [0.04, 1.0, 0.0]
    """
    (max_lr,) = _check(max_lr)
    _count(total_steps, "total_steps")
    for name, value in (
        ("pct_start", pct_start),
        ("div_factor", div_factor),
        ("final_div_factor", final_div_factor),
    ):
        _hyperparams.check_hyperparameter(value, name)
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(
            f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
        )
    if total_steps < 1 or not 0 < pct_start < 1:
        raise ValueError("total_steps must be positive and pct_start in (0, 1).")
    initial = max_lr / div_factor
    values = (initial, max_lr, initial / final_div_factor)
    return _one_cycle_schedule(total_steps, pct_start, three_phase, anneal_strategy, values)


def one_cycle_momentum(
    total_steps: int,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
    pct_start: float = 0.3,
    anneal_strategy: Anneal = "cos",
    three_phase: bool = False,
) -> Schedule:
    """``OneCycleLR``'s momentum (``cycle_momentum=True``): from ``max_momentum`` down to
    ``base_momentum`` while the learning rate rises, and back.

    Examples:
      >>> from sgdx import schedules
      >>> schedule = schedules.one_cycle_momentum(10, anneal_strategy="linear")
      >>> [round(float(schedule(t)), 4) for t in (0, 2, 9)]
      [0.95, 0.85, 0.95]
    """
    _count(total_steps, "total_steps")
    for name, value in (("base_momentum", base_momentum), ("max_momentum", max_momentum)):
        _hyperparams.check_hyperparameter(value, name)
    base_momentum, max_momentum = float(base_momentum), float(max_momentum)
    values = (max_momentum, base_momentum, max_momentum)
    return _one_cycle_schedule(total_steps, pct_start, three_phase, anneal_strategy, values)


CyclicMode = Literal["triangular", "triangular2", "exp_range"]


def _cyclic(
    start: float,
    peak: float,
    step_size_up: int,
    step_size_down: int | None,
    mode: CyclicMode,
    gamma: float,
    scale_fn: Callable[[jax.Array], jax.Array] | None,
    scale_mode: Literal["cycle", "iterations"],
) -> Schedule:
    """CyclicLR's value ``start + (peak - start) * factor * scale`` (torch's ``get_lr``)."""
    _count(step_size_up, "step_size_up")
    if step_size_down is not None:
        _count(step_size_down, "step_size_down")
    if mode not in ("triangular", "triangular2", "exp_range") and scale_fn is None:
        raise ValueError("mode is invalid and scale_fn is None")
    if scale_mode not in ("cycle", "iterations"):
        raise ValueError(f"scale_mode must be 'cycle' or 'iterations', got {scale_mode!r}.")
    if scale_fn is None:  # as torch's _init_scale_fn: each mode has its scale_mode
        scale_mode = "iterations" if mode == "exp_range" else "cycle"
    up = float(step_size_up)
    total = up + (float(step_size_down) if step_size_down is not None else up)
    ratio = up / total
    height = peak - start

    def value(t: Any, xp: Any) -> Any:
        cycle = xp.floor(1 + t / total)
        x = 1.0 + t / total - cycle
        factor = xp.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
        at = cycle if scale_mode == "cycle" else t
        scale: Any
        if scale_fn is not None:
            scale = scale_fn(at)
        elif mode == "triangular":
            scale = 1.0
        elif mode == "triangular2":
            scale = 1 / (2.0 ** (at - 1))
        else:
            scale = gamma**at
        return start + height * factor * scale

    if scale_fn is not None:
        return lambda count: value(_float(count), jnp)
    periodic = mode == "triangular" and total.is_integer()
    length = int(total) if periodic else min(_TABLE_LIMIT, 16 * int(total))
    return _tabulated(
        lambda count: value(_float(count), jnp),
        lambda t: value(t, np),
        length,
        period=length if periodic else None,
        constant_after=False,
    )


def cyclic_lr(
    base_lr: float,
    max_lr: float,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: CyclicMode = "triangular",
    gamma: float = 1.0,
    scale_fn: Callable[[jax.Array], jax.Array] | None = None,
    scale_mode: Literal["cycle", "iterations"] = "cycle",
) -> Schedule:
    r"""``CyclicLR``'s learning rate: between ``base_lr`` and ``max_lr``, up over
    ``step_size_up`` updates and down over ``step_size_down`` (default: the same), the
    height scaled by ``mode``: ``"triangular"`` 1, ``"triangular2"`` :math:`2^{1-c}` in cycle
    :math:`c`, ``"exp_range"`` :math:`\gamma^t`; or by a JAX-traceable ``scale_fn`` of the
    cycle or the count (``scale_mode``).

    torch's CyclicLR also cycles momentum by default (``cycle_momentum=True``); pass
    :func:`cyclic_momentum` as the momentum of ``sgdx.inject_hyperparams(sgdx.sgd)`` for that.

    Examples:
      >>> from sgdx import schedules
      >>> schedule = schedules.cyclic_lr(0.1, 1.0, step_size_up=2)
      >>> [round(float(schedule(t)), 4) for t in range(5)]
      [0.1, 0.55, 1.0, 0.55, 0.1]
    """
    base_lr, max_lr = _check(base_lr, max_lr)
    return _cyclic(base_lr, max_lr, step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode)


def cyclic_momentum(
    base_momentum: float = 0.8,
    max_momentum: float = 0.9,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: CyclicMode = "triangular",
    gamma: float = 1.0,
    scale_fn: Callable[[jax.Array], jax.Array] | None = None,
    scale_mode: Literal["cycle", "iterations"] = "cycle",
) -> Schedule:
    """``CyclicLR``'s momentum (``cycle_momentum=True``): from ``max_momentum`` down to
    ``base_momentum`` while the learning rate rises, and back, with :func:`cyclic_lr`'s
    cycle and scaling.

    Examples:
      >>> from sgdx import schedules
      >>> schedule = schedules.cyclic_momentum(0.8, 0.9, step_size_up=2)
      >>> [round(float(schedule(t)), 4) for t in range(5)]
      [0.9, 0.85, 0.8, 0.85, 0.9]
    """
    for name, value in (("base_momentum", base_momentum), ("max_momentum", max_momentum)):
        _hyperparams.check_hyperparameter(value, name)
    return _cyclic(
        float(max_momentum),
        float(base_momentum),
        step_size_up,
        step_size_down,
        mode,
        gamma,
        scale_fn,
        scale_mode,
    )


def lambda_lr(base_lr: float, lr_lambda: Callable[[jax.Array], jax.Array]) -> Schedule:
    r"""``LambdaLR``: :math:`\eta_0 \cdot` ``lr_lambda(t)`` (a JAX-traceable function).

    Examples:
      >>> from sgdx import schedules
      >>> [round(float(schedules.lambda_lr(1.0, lambda t: 1 / (t + 1.0))(t)), 4) for t in range(3)]
      [1.0, 0.5, 0.3333]
    """
    (base_lr,) = _check(base_lr)
    return lambda count: base_lr * lr_lambda(jnp.asarray(count))


def multiplicative_lr(base_lr: float, lr_lambda: Callable[[jax.Array], jax.Array]) -> Schedule:
    r"""``MultiplicativeLR``: :math:`\eta_t = \eta_0 \prod_{i=1}^{t}` ``lr_lambda(i)``.

    The product is taken in a loop of ``t`` iterations per evaluation.

    Examples:
      >>> from sgdx import schedules
      >>> [float(schedules.multiplicative_lr(1.0, lambda i: 0.5)(t)) for t in range(3)]
      [1.0, 0.5, 0.25]
    """
    (base_lr,) = _check(base_lr)

    def schedule(count: jax.Array) -> jax.Array:
        t = jnp.asarray(count, jnp.int32)
        one = jnp.asarray(base_lr, jax.dtypes.canonicalize_dtype(jnp.float64))
        return jnp.asarray(jax.lax.fori_loop(1, t + 1, lambda i, lr: lr * lr_lambda(i), one))

    return schedule


def sequential(schedules: Sequence[Schedule], milestones: Sequence[int]) -> Schedule:
    """``SequentialLR``: ``schedules[i]`` from ``milestones[i - 1]`` on, restarted there.

    Examples:
      >>> from sgdx import schedules
      >>> warmup = schedules.linear_lr(1.0, 0.5, 1.0, total_iters=2)
      >>> schedule = schedules.sequential([warmup, schedules.exponential_lr(1.0, 0.5)], [2])
      >>> [float(schedule(t)) for t in range(4)]
      [0.5, 0.75, 1.0, 0.5]
    """
    if len(milestones) != len(schedules) - 1:
        raise ValueError(
            "Sequential Schedulers expects number of schedulers provided to be one more than "
            f"the number of milestone points, but got number of schedulers {len(schedules)} "
            f"and the number of milestones to be equal to {len(milestones)}"
        )
    starts = [0, *milestones]

    def schedule(count: jax.Array) -> jax.Array:
        t = jnp.asarray(count, jnp.int32)
        value = jnp.asarray(schedules[0](t))
        for start, inner in zip(starts[1:], schedules[1:], strict=True):
            value = jnp.where(t >= start, inner(jnp.maximum(t - start, 0)), value)
        return value

    return schedule


def chained(base_lr: float, *schedules: Schedule) -> Schedule:
    r"""``ChainedScheduler``: every schedule's factor applied together,
    :math:`\eta_t = \eta_0 \prod_i s_i(t) / \eta_0`, each :math:`s_i` built with ``base_lr``.

    This is torch's result for multiplicative schedulers (StepLR, MultiStepLR,
    ExponentialLR, ConstantLR, LinearLR), the ones chained in practice.

    Examples:
      >>> from sgdx import schedules
      >>> schedule = schedules.chained(
      ...     1.0, schedules.constant_lr(1.0, 0.5, 2), schedules.exponential_lr(1.0, 0.5))
      >>> [float(schedule(t)) for t in range(3)]
      [0.5, 0.25, 0.25]
    """
    (base_lr,) = _check(base_lr)

    def schedule(count: jax.Array) -> jax.Array:
        value = jnp.asarray(base_lr, jax.dtypes.canonicalize_dtype(jnp.float64))
        for inner in schedules:
            value = value * (inner(count) / base_lr)
        return value

    return schedule


def per_epoch(schedule: Schedule, steps_per_epoch: int) -> Schedule:
    """A schedule stepped once per epoch, for a run of ``steps_per_epoch`` updates per epoch.

    torch recipes usually call ``scheduler.step()`` after each epoch, not each batch:
    ``per_epoch(step_lr(0.1, step_size=30), len(loader))`` is that ``StepLR``.

    Examples:
      >>> from sgdx import schedules
      >>> schedule = schedules.per_epoch(schedules.exponential_lr(1.0, 0.5), steps_per_epoch=2)
      >>> [float(schedule(t)) for t in range(5)]
      [1.0, 1.0, 0.5, 0.5, 0.25]
    """
    _count(steps_per_epoch, "steps_per_epoch")
    return lambda count: schedule(jnp.asarray(count) // steps_per_epoch)


def _check_warmup(warmup_steps: int) -> None:
    _count(warmup_steps, "warmup_steps")


def warmup(
    schedule: Schedule,
    warmup_steps: int,
    warmup_factor: float = 0.001,
    method: Literal["linear", "constant"] = "linear",
) -> Schedule:
    r"""A warmup that hands over to ``schedule`` without restarting it (Detectron2's
    ``WarmupParamScheduler``, its ``WARMUP_ITERS`` / ``WARMUP_FACTOR`` / ``WARMUP_METHOD``).

    For :math:`t < W` (``warmup_steps``) the value starts at :math:`f \cdot s(0)` and,
    with ``method="linear"``, rises linearly to :math:`s(W)`, the value ``schedule``
    :math:`s` has where the warmup ends; ``"constant"`` stays at :math:`f \cdot s(0)`.
    From :math:`W` on it is :math:`s(t)`: the main schedule keeps its own time, unlike
    :func:`sequential` (torch's SequentialLR), which restarts it.

    Examples:
      >>> from sgdx import schedules
      >>> main = schedules.multistep_lr(1.0, milestones=[4], gamma=0.1)
      >>> schedule = schedules.warmup(main, warmup_steps=2, warmup_factor=0.5)
      >>> [float(schedule(t)) for t in range(6)]
      [0.5, 0.75, 1.0, 1.0, 0.1, 0.1]
    """
    _check_warmup(warmup_steps)
    _hyperparams.check_hyperparameter(warmup_factor, "warmup_factor")
    warmup_factor = float(warmup_factor)
    if method not in ("linear", "constant"):
        raise ValueError(f"method must be 'linear' or 'constant', got {method!r}.")

    def warmed(count: jax.Array) -> jax.Array:
        t = jnp.asarray(count)
        start = warmup_factor * jnp.asarray(schedule(jnp.zeros_like(t)))
        if method == "linear":
            end = jnp.asarray(schedule(jnp.full_like(t, warmup_steps)))
            progress = _float(t) / warmup_steps
            value = end * progress + start * (1 - progress)
        else:
            value = start
        return jnp.where(t < warmup_steps, value, schedule(t))

    return warmed


def warmup_from(
    schedule: Schedule, warmup_steps: int, warmup_lr: float, *, prefix: bool = False
) -> Schedule:
    r"""A linear warmup from a learning rate of its own (timm's ``warmup_t`` /
    ``warmup_lr_init`` / ``warmup_prefix``).

    For :math:`t < W` (``warmup_steps``): :math:`\eta_w + t (s(0) - \eta_w) / W`, from
    ``warmup_lr`` :math:`\eta_w` towards the schedule's start :math:`s(0)`. From :math:`W`
    on: :math:`s(t - W)` with ``prefix`` (the schedule starts after the warmup), else
    :math:`s(t)` (the warmup overlays the schedule's first steps).

    Examples:
      >>> from sgdx import schedules
      >>> main = schedules.exponential_lr(1.0, 0.5)
      >>> [float(schedules.warmup_from(main, 2, 0.0)(t)) for t in range(4)]
      [0.0, 0.5, 0.25, 0.125]
      >>> [float(schedules.warmup_from(main, 2, 0.0, prefix=True)(t)) for t in range(4)]
      [0.0, 0.5, 1.0, 0.5]
    """
    _check_warmup(warmup_steps)
    _hyperparams.check_hyperparameter(warmup_lr, "warmup_lr")
    warmup_lr = float(warmup_lr)

    def warmed(count: jax.Array) -> jax.Array:
        t = jnp.asarray(count)
        base = jnp.asarray(schedule(jnp.zeros_like(t)))
        value = warmup_lr + _float(t) * ((base - warmup_lr) / warmup_steps)
        after = schedule(jnp.maximum(t - warmup_steps, 0)) if prefix else schedule(t)
        return jnp.where(t < warmup_steps, value, after)

    return warmed
