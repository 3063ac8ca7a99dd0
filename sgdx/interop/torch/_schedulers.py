"""torch's learning-rate schedulers as sgdx schedules: the one place that reads their private
attributes (``_schedulers``, ``_milestones``, ``_schedule_phases``, ...), checked against the
installed torch by the tests."""

from __future__ import annotations

import bisect
import copy
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdx import _hyperparams
from sgdx import schedules as _schedules
from sgdx._base import Schedule
from sgdx.interop.torch._common import _torch
from sgdx.schedules import FractionalEpochs


def _traceable(fn: Callable[[Any], Any], kind: str) -> Callable[[Any], Any]:
    """``fn`` if JAX can trace it over an integer count, else a TypeError saying what to do."""
    try:
        jax.eval_shape(fn, jax.ShapeDtypeStruct((), jnp.int32))  # type: ignore[no-untyped-call]
    except Exception as error:
        raise TypeError(
            f"{kind}'s function {getattr(fn, '__name__', fn)!r} cannot be traced by JAX "
            f"({type(error).__name__}: {str(error).splitlines()[0][:120]}). Write it with "
            "jax.numpy (e.g. "
            "jnp.where instead of if, jnp.minimum instead of min), or pass schedules=[...] "
            "to from_torch: one count -> lr function per param group, over scheduler steps."
        ) from error
    return fn


def _schedule(scheduler: Any, group: int) -> Schedule:
    """torch's scheduler as an sgdx schedule for one param group, over scheduler steps."""
    if _multiplies(scheduler):
        return _at(scheduler, group, _scheduler_steps(scheduler))
    return _converted(scheduler, group)


def _converted(scheduler: Any, group: int, base: float | None = None) -> Schedule:
    """``scheduler``'s closed form for one group, from ``base`` (by default the group's
    ``base_lrs`` entry): where a fresh scheduler's steps take the lr."""
    torch = _torch()

    lr_scheduler = torch.optim.lr_scheduler
    kind = type(scheduler)
    if kind is lr_scheduler.SequentialLR:
        milestones = list(scheduler._milestones)
        position = int(scheduler.last_epoch)
        current = bisect.bisect_right(milestones, position)  # the part that runs now
        start = [0, *milestones][current]
        children = [  # the others start afresh at their milestones
            _at(child, group, position - start) if i == current else _converted(child, group)
            for i, child in enumerate(scheduler._schedulers)
        ]
        return _schedules.sequential(children, milestones)
    if kind is lr_scheduler.ChainedScheduler:
        children = [_converted(child, group) for child in scheduler._schedulers]
        return _schedules.chained(float(scheduler._schedulers[0].base_lrs[group]), *children)
    if kind is lr_scheduler.OneCycleLR:
        options = scheduler.optimizer.param_groups[group]
        phases = scheduler._schedule_phases
        return _schedules.one_cycle_lr(
            float(options["max_lr"]),
            scheduler.total_steps,
            pct_start=(phases[0]["end_step"] + 1) / scheduler.total_steps,
            anneal_strategy=scheduler._anneal_func_type,
            div_factor=float(options["max_lr"]) / float(options["initial_lr"]),
            final_div_factor=float(options["initial_lr"]) / float(options["min_lr"]),
            three_phase=len(phases) == 3,
        )
    base = float(scheduler.base_lrs[group]) if base is None else base
    converters: dict[type, Callable[[], Schedule]] = {
        lr_scheduler.StepLR: lambda: _schedules.step_lr(base, scheduler.step_size, scheduler.gamma),
        lr_scheduler.MultiStepLR: lambda: _schedules.multistep_lr(
            base, sorted(scheduler.milestones.elements()), scheduler.gamma
        ),
        lr_scheduler.ExponentialLR: lambda: _schedules.exponential_lr(base, scheduler.gamma),
        lr_scheduler.ConstantLR: lambda: _schedules.constant_lr(
            base, scheduler.factor, scheduler.total_iters
        ),
        lr_scheduler.LinearLR: lambda: _schedules.linear_lr(
            base, scheduler.start_factor, scheduler.end_factor, scheduler.total_iters
        ),
        lr_scheduler.PolynomialLR: lambda: _schedules.polynomial_lr(
            base, scheduler.total_iters, scheduler.power
        ),
        lr_scheduler.CosineAnnealingLR: lambda: _schedules.cosine_annealing_lr(
            base, scheduler.T_max, scheduler.eta_min
        ),
        lr_scheduler.CosineAnnealingWarmRestarts: lambda: _schedules.cosine_annealing_warm_restarts(
            base, scheduler.T_0, scheduler.T_mult, scheduler.eta_min
        ),
        lr_scheduler.LambdaLR: lambda: _schedules.lambda_lr(
            base, _traceable(scheduler.lr_lambdas[group], "LambdaLR")
        ),
        lr_scheduler.MultiplicativeLR: lambda: _schedules.multiplicative_lr(
            base, _traceable(scheduler.lr_lambdas[group], "MultiplicativeLR")
        ),
        lr_scheduler.CyclicLR: lambda: _schedules.cyclic_lr(
            base, float(scheduler.max_lrs[group]), **_cycle(scheduler)
        ),
    }
    if kind not in converters:
        raise TypeError(
            f"from_torch cannot convert a {kind.__module__}.{kind.__qualname__}: it converts "
            f"{sorted(c.__name__ for c in converters)}, SequentialLR, ChainedScheduler, "
            "OneCycleLR and ReduceLROnPlateau. "
            "Pass schedules=[...]: one count -> lr function per param group over scheduler "
            "steps, built from sgdx.schedules (to_torch still writes the scheduler's state, "
            "by stepping a copy of it)."
        )
    return converters[kind]()


def _multiplies(scheduler: Any) -> bool:
    """Whether ``scheduler``'s step multiplies each group's current lr by one factor (so that
    it also drives a group added with ``add_param_group`` after it was built): one of the
    chainable schedulers below, or a ChainedScheduler of them."""
    torch = _torch()

    lr_scheduler = torch.optim.lr_scheduler
    if type(scheduler) is lr_scheduler.ChainedScheduler:
        return all(_multiplies(child) for child in scheduler._schedulers)
    chainable = (
        lr_scheduler.StepLR,
        lr_scheduler.MultiStepLR,
        lr_scheduler.ExponentialLR,
        lr_scheduler.ConstantLR,
        lr_scheduler.LinearLR,
        lr_scheduler.PolynomialLR,
    )
    return isinstance(scheduler, chainable)


def _unit(scheduler: Any, group: int) -> Schedule:
    """A multiplying ``scheduler``'s rule for an lr of 1: its factors so far, at each step."""
    torch = _torch()

    if type(scheduler) is torch.optim.lr_scheduler.ChainedScheduler:
        return _schedules.chained(1.0, *(_unit(child, group) for child in scheduler._schedulers))
    return _converted(scheduler, group, 1.0)


def _at(scheduler: Any, group: int, position: int) -> Schedule:
    """:func:`_schedule` for a scheduler at ``position`` (in its parent's count). One that
    multiplies the lr goes on from the group's lr now by its factors from there, as torch's
    steps do, also where its state does not show the lr: a group added after it was built,
    an lr set by hand, schedulers nested on one optimizer (whose first steps are taken
    twice)."""
    if not _multiplies(scheduler):
        return _converted(scheduler, group)
    unit, lr = _unit(scheduler, group), float(scheduler.optimizer.param_groups[group]["lr"])
    now = float(np.asarray(unit(jnp.asarray(position))))
    if now == 0.0:  # a PolynomialLR past its end: its factors are 1 from here
        return lambda count: jnp.asarray(lr, _hyperparams.default_float())
    return lambda count: (lr / now) * unit(count)


def _cycle(scheduler: Any) -> dict[str, Any]:
    """A ``CyclicLR``'s cycle, as :func:`sgdx.schedules.cyclic_lr` takes it."""
    up = round(scheduler.total_size * scheduler.step_ratio)
    custom = scheduler._scale_fn_custom
    return dict(
        step_size_up=up,
        step_size_down=round(scheduler.total_size) - up,
        mode=scheduler.mode,
        gamma=float(scheduler.gamma),
        scale_fn=None if custom is None else _traceable(custom, "CyclicLR's scale_fn"),
        scale_mode=scheduler.scale_mode,
    )


def _momentum_schedule(scheduler: Any, group: int) -> Schedule | None:
    """The momentum schedule of a scheduler that cycles momentum (OneCycleLR, CyclicLR with
    ``cycle_momentum``) for one param group, over scheduler steps; else ``None``."""
    torch = _torch()

    lr_scheduler = torch.optim.lr_scheduler
    if not getattr(scheduler, "cycle_momentum", False):
        return None
    options = scheduler.optimizer.param_groups[group]
    if type(scheduler) is lr_scheduler.OneCycleLR:
        phases = scheduler._schedule_phases
        return _schedules.one_cycle_momentum(
            scheduler.total_steps,
            base_momentum=float(options["base_momentum"]),
            max_momentum=float(options["max_momentum"]),
            pct_start=(phases[0]["end_step"] + 1) / scheduler.total_steps,
            anneal_strategy=scheduler._anneal_func_type,
            three_phase=len(phases) == 3,
        )
    return _schedules.cyclic_momentum(
        float(scheduler.base_momentums[group]),
        float(scheduler.max_momentums[group]),
        **_cycle(scheduler),
    )


def _children(scheduler: Any) -> list[Any]:
    """``scheduler`` and the schedulers nested in it (SequentialLR, ChainedScheduler)."""
    nested = getattr(scheduler, "_schedulers", [])
    return [scheduler, *(x for child in nested for x in _children(child))]


def _cycling(scheduler: Any) -> list[Any]:
    """The schedulers in ``scheduler`` (itself included) that cycle momentum."""
    return [c for c in _children(scheduler) if getattr(c, "cycle_momentum", False)]


def _step(scheduler: Any, epoch: float | None = None) -> None:
    """One step of a detached scheduler as the run takes it: its stand-in optimizer's step,
    then its own (with ``epoch``, for a run that passes fractional epochs)."""
    with warnings.catch_warnings():  # the stand-in optimizer's step is not wrapped
        warnings.simplefilter("ignore")
        scheduler.optimizer.step()
        scheduler.step() if epoch is None else scheduler.step(epoch)


def _fractional(
    scheduler: Any, optimizer: Any, steps_per_epoch: int, fractional_epochs: FractionalEpochs
) -> tuple[list[Schedule], int]:
    """A ``CosineAnnealingWarmRestarts`` that the run steps after every update with a
    fractional epoch: one schedule per group over updates, and the updates taken, read from
    its ``last_epoch`` and ``T_cur`` (refused where no update count puts it there)."""
    torch = _torch()

    kind = type(scheduler)
    if kind is not torch.optim.lr_scheduler.CosineAnnealingWarmRestarts:
        raise TypeError(
            f"from_torch: fractional_epochs is for a CosineAnnealingWarmRestarts stepped with "
            f"scheduler.step(epoch + i / iters), and the scheduler is a {kind.__name__}."
        )
    n = steps_per_epoch
    batch = round(float(scheduler.T_cur) % 1 * n) % n  # T_cur's fraction is the epoch's
    count = int(scheduler.last_epoch) * n + batch + 1 - _schedules._EPOCH_OFFSET[fractional_epochs]
    if count == 1 and fractional_epochs == "i" and not getattr(optimizer, "_opt_called", False):
        count = 0  # built, not stepped yet: epoch 0 either way
    probe = _detached(scheduler, optimizer)
    if count:
        _step(probe, _schedules._fractional_epoch(count - 1, n, fractional_epochs))
    attributes = ("T_cur", "T_i", "last_epoch")
    if any(getattr(probe, a) != getattr(scheduler, a) for a in attributes):
        raise ValueError(
            f"from_torch: the CosineAnnealingWarmRestarts is at T_cur={scheduler.T_cur!r}, "
            f"last_epoch={scheduler.last_epoch}, where no update of a run stepping it with "
            f"{'epoch + i' if fractional_epochs == 'i' else 'epoch + (i + 1)'} / {n} puts it. "
            "Pass the run's steps_per_epoch (len(loader)) and fractional_epochs ('i' or "
            "'i + 1', as its loop computes the epoch)."
        )
    lrs = [
        _schedules.cosine_annealing_warm_restarts(
            float(base),
            scheduler.T_0,
            scheduler.T_mult,
            scheduler.eta_min,
            steps_per_epoch=n,
            fractional_epochs=fractional_epochs,
        )
        for base in scheduler.base_lrs
    ]
    return lrs, count


def _check_scheduler(scheduler: Any, optimizer: Any, fractional: bool) -> None:
    """Raises unless ``scheduler`` is torch's, drives ``optimizer`` with all its groups, and
    is at a whole step unless the run passes ``fractional`` epochs: what from_torch can carry
    exactly."""
    torch = _torch()

    lr_scheduler = torch.optim.lr_scheduler
    kind = type(scheduler)
    name = f"{kind.__module__}.{kind.__qualname__}"
    if not isinstance(scheduler, lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau):
        raise TypeError(
            f"from_torch converts torch.optim.lr_scheduler's schedulers, and {name} is not "
            "one. Pass scheduler=None with schedules=[...] (one count -> lr per param group, "
            "over updates, e.g. from sgdx.schedules) and count= (the updates the run has "
            "taken, so that the schedule goes on from there instead of restarting); set that "
            "scheduler's own position when the run goes back to torch."
        )
    n_groups = len(optimizer.param_groups)
    multiplies = _multiplies(scheduler)
    for child in _children(scheduler):
        if child.optimizer is not optimizer:
            raise ValueError(
                f"from_torch: the {type(child).__name__} drives another optimizer than the one "
                "given; pass the scheduler built on this optimizer."
            )
        per_group = getattr(child, "base_lrs", getattr(child, "min_lrs", None))
        drives_new_groups = multiplies or getattr(child, "default_min_lr", None)
        if per_group is not None and len(per_group) != n_groups and not drives_new_groups:
            raise ValueError(
                f"from_torch: the optimizer has {n_groups} param groups, but its "
                f"{type(child).__name__} was built for {len(per_group)} (a group added with "
                "add_param_group after the scheduler was built): only a scheduler that "
                "multiplies each group's lr (StepLR, MultiStepLR, ExponentialLR, ConstantLR, "
                "LinearLR, PolynomialLR) or a ReduceLROnPlateau built with one min_lr "
                "drives the new groups (torch's own run of the others fails on them). Pass "
                "scheduler=None, schedules=[...] (one per group) and count=."
            )
        t_cur, last = getattr(child, "T_cur", 0), getattr(child, "last_epoch", 0)
        if not fractional and (float(t_cur) != int(t_cur) or float(last) != int(last)):
            raise ValueError(
                f"from_torch: the {type(child).__name__} was stepped with a fractional epoch "
                f"(T_cur={t_cur}, last_epoch={last}), as scheduler.step(epoch + i / iters) "
                "does; its schedule over whole steps would not continue it. Pass "
                "steps_per_epoch=iters and fractional_epochs='i' (or 'i + 1' for a loop that "
                "steps it with epoch + (i + 1) / iters)."
            )
    cycling = _cycling(scheduler)
    if cycling and cycling != [scheduler]:
        raise TypeError(
            f"from_torch: a {type(cycling[0]).__name__} that cycles momentum inside a "
            f"{kind.__name__} cannot be converted; pass scheduler=None, schedules=[{{"
            "'learning_rate': ..., 'momentum': ...}, ...] (one per group) and count=."
        )


def _plateau_min_lrs(scheduler: Any, n_groups: int) -> list[float]:
    """A ``ReduceLROnPlateau``'s floor per group: its one ``min_lr`` for every group when
    groups were added after it was built (as torch's next reduction sets them)."""
    if len(scheduler.min_lrs) == n_groups:
        return [float(m) for m in scheduler.min_lrs]
    return [float(scheduler.default_min_lr)] * n_groups


def _scheduler_steps(scheduler: Any) -> int:
    """How many times ``scheduler.step()`` has been called since it was built."""
    torch = _torch()

    if type(scheduler) is torch.optim.lr_scheduler.ChainedScheduler:
        return _scheduler_steps(scheduler._schedulers[0])
    return int(scheduler.last_epoch)


def _given_schedules(
    schedules: Sequence[Schedule | Mapping[str, Schedule]], scheduler: Any
) -> tuple[list[Schedule], list[Schedule | None]]:
    """``schedules=`` as learning-rate and momentum schedules, refusing a run whose
    scheduler cycles momentum when no momentum schedule is given."""
    lrs: list[Schedule] = []
    momenta: list[Schedule | None] = []
    for i, entry in enumerate(schedules):
        if isinstance(entry, Mapping):
            unknown = sorted(set(entry) - {"learning_rate", "momentum"})
            if unknown or "learning_rate" not in entry:
                raise ValueError(
                    f"from_torch: schedules[{i}] maps {sorted(entry)}; a group's entry is a "
                    "learning-rate schedule or {'learning_rate': ..., 'momentum': ...}."
                )
            lrs.append(entry["learning_rate"])
            momenta.append(entry.get("momentum"))
        elif callable(entry):
            lrs.append(entry)
            momenta.append(None)
        else:
            raise TypeError(
                f"from_torch: schedules[{i}] is a {type(entry).__name__}; a group's entry is a "
                "count -> lr function or {'learning_rate': ..., 'momentum': ...}."
            )
    cycling = _cycling(scheduler)
    if cycling and any(m is None for m in momenta):
        raise ValueError(
            f"from_torch: the {type(cycling[0]).__name__} cycles momentum (cycle_momentum="
            "True), so the run's momentum changes every step: give it with the learning "
            "rate, schedules=[{'learning_rate': ..., 'momentum': ...}, ...] (e.g. "
            "sgdx.schedules.cyclic_momentum / one_cycle_momentum), or the sgdx run would keep "
            "the momentum fixed."
        )
    return lrs, momenta


def _detached(scheduler: Any, optimizer: Any) -> Any:
    """A copy of ``scheduler`` driving a stand-in optimizer that has ``optimizer``'s groups
    (their hyperparameters and scheduler keys, one scalar parameter each)."""
    torch = _torch()

    stand_in = torch.optim.SGD(
        [
            {
                **{k: v for k, v in g.items() if k not in ("params", "param_names")},
                "params": [torch.zeros(1)],
            }
            for g in optimizer.param_groups
        ]
    )
    return copy.deepcopy(scheduler, memo={id(optimizer): stand_in})


def _scheduler_state(
    handed_over: Any,
    steps: int,
    written: dict[str, Any],
    plateau_state: Any,
    epoch: float | None = None,
) -> dict[str, Any]:
    """The ``state_dict`` of the scheduler as it was handed over (``run.scheduler``),
    brought to where the sgdx run is: ``steps`` more scheduler steps, one step to ``epoch``
    (a run that passes epochs), or a ``ReduceLROnPlateau``'s ``plateau_state`` and the
    learning rates ``written``. Each of
    ``written``'s groups takes the scheduler's keys (``initial_lr``, ``max_lr``, ...) and
    torch's own learning rate and momentum."""
    torch = _torch()

    scheduler = copy.deepcopy(handed_over)
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if plateau_state is None:
            raise ValueError("to_torch: pass plateau_state= for a ReduceLROnPlateau run.")
        scheduler.best = float(plateau_state.best)
        scheduler.num_bad_epochs = int(plateau_state.num_bad_epochs)
        scheduler.cooldown_counter = int(plateau_state.cooldown_counter)
        scheduler.last_epoch = int(plateau_state.last_epoch)
        for group, entry in zip(
            scheduler.optimizer.param_groups, written["param_groups"], strict=True
        ):
            group["lr"] = entry["lr"]
        scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]
    elif epoch is not None:
        _step(scheduler, epoch)
    else:
        for _ in range(steps):
            _step(scheduler)
    for entry, group in zip(written["param_groups"], scheduler.optimizer.param_groups, strict=True):
        extra = {k: v for k, v in group.items() if k not in ("params", "param_names", *entry)}
        entry.update(extra, lr=group["lr"], momentum=group["momentum"])
    return scheduler.state_dict()  # type: ignore[no-any-return]


# How many scheduler steps ahead a conversion is checked against torch's own scheduler.
_HORIZON = 256


def _check_against_torch(
    detached: Any,
    lrs: list[Schedule],
    momenta: list[Schedule | None],
    position: int,
    epoch: Callable[[int], float] | None = None,
) -> None:
    """Raises unless the sgdx schedules give, for the next ``_HORIZON`` scheduler steps from
    ``position``, the learning rates (and momenta, where they are scheduled) that torch's
    own scheduler sets: a copy of it (``detached``, on a stand-in optimizer) is stepped
    forward (with ``epoch(k)`` after update ``k`` for a run that passes epochs) and compared
    step by step. What from_torch converts is then torch's by test, not by assumption."""
    scheduler = copy.deepcopy(detached)
    expected: list[list[tuple[float, float]]] = []
    for j in range(_HORIZON):
        try:
            _step(scheduler, None if epoch is None else epoch(position + j))
        except Exception:  # past a finite schedule's end, where torch's
            break  # run raises too (OneCycleLR; a LambdaLR's function out of its range)
        expected.append(
            [(float(g["lr"]), float(g["momentum"])) for g in scheduler.optimizer.param_groups]
        )
    if not expected:
        return
    counts = jnp.arange(position + 1, position + 1 + len(expected), dtype=jnp.int32)
    rtol = 1e-12 if _hyperparams.default_float() == np.float64 else 1e-6
    for i, (lr, momentum) in enumerate(zip(lrs, momenta, strict=True)):
        for name, schedule, k in (("lr", lr, 0), ("momentum", momentum, 1)):
            if schedule is None:
                continue
            ours = np.asarray(jax.vmap(schedule)(counts), np.float64)
            theirs = np.asarray([step[i][k] for step in expected])
            wrong = np.flatnonzero(~np.isclose(ours, theirs, rtol=rtol, atol=0))
            if wrong.size:
                at = int(wrong[0])
                raise ValueError(
                    f"from_torch: the {type(detached).__name__} sets param group {i}'s {name} to "
                    f"{float(theirs[at])!r} at scheduler step {position + 1 + at}, where its "
                    f"conversion gives {float(ours[at])!r} (torch's own scheduler, stepped on a "
                    "copy, is the reference: an lr set by hand, for one, is not in a "
                    "scheduler's closed form). Pass schedules=[...] that follow it, one per "
                    "group."
                )
