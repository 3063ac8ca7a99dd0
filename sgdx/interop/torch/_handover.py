"""A live torch run handed to sgdx (:func:`from_torch`) and back (:func:`to_torch`)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import tree_flatten_with_path

from sgdx import schedules as _schedules
from sgdx._base import GradientTransformation, Params, Schedule
from sgdx._groups import ParamGroupsState, param_groups
from sgdx._plateau import ReduceLROnPlateau, ReduceLROnPlateauState, reduce_lr_on_plateau
from sgdx._sgd_state import dotted
from sgdx.interop.torch._common import _SGD_KEYS, _groups, _to_numpy, _torch, leaf_names
from sgdx.interop.torch._schedulers import (
    _check_against_torch,
    _check_scheduler,
    _detached,
    _fractional,
    _given_schedules,
    _momentum_schedule,
    _plateau_min_lrs,
    _schedule,
    _scheduler_state,
    _scheduler_steps,
)
from sgdx.interop.torch._state_dict import load_state_dict, state_dict
from sgdx.schedules import FractionalEpochs, _fractional_epoch


class TorchRun(NamedTuple):
    """A torch run in sgdx terms, from :func:`from_torch`."""

    tx: GradientTransformation
    """The optimizer: :func:`sgdx.param_groups`, one sgdx group per torch group (labelled
    ``"0"``, ``"1"``, ...; parameters the optimizer does not hold are frozen)."""
    state: ParamGroupsState
    """Its state, positioned where torch's run is (buffers, learning rates, count)."""
    params: dict[str, jax.Array]
    """The model's parameters by torch name (``"fc1.weight"``), a flat pytree."""
    plateau: ReduceLROnPlateau | None
    """For a ``ReduceLROnPlateau`` scheduler: its sgdx equivalent, stepped like torch's
    (``plateau_state, state = run.plateau.step(plateau_state, state, val_loss)``)."""
    plateau_state: ReduceLROnPlateauState | None
    """Its state, torch's ``best`` / ``num_bad_epochs`` / ``cooldown_counter`` / ``last_epoch``."""
    names: tuple[str, ...]
    """The optimizer's parameter names, in its order."""
    flags: tuple[tuple[bool, bool], ...]
    """Each torch group's ``(nesterov, maximize)``."""
    steps_per_epoch: int | None
    """Updates per epoch, for a scheduler stepped once per epoch or with fractional epochs."""
    fractional_epochs: FractionalEpochs | None
    """How the run computes the epoch it passes to ``scheduler.step`` after batch ``i``
    (``"i"``: ``epoch + i / steps_per_epoch``, ``"i + 1"``), or ``None``."""
    scheduler: Any
    """A copy of the torch scheduler as it was, on a stand-in optimizer with the same
    groups (:func:`to_torch` steps a copy of it forward to write torch's own state)."""
    scheduler_steps: int
    """``scheduler.step()`` calls the scheduler had taken when the run was handed over (for
    fractional epochs: the updates)."""
    group_keys: tuple[dict[str, Any], ...]
    """Each torch group's keys that are not SGD's (timm's ``lr_scale``, ``layer_decay``, any
    user key), which :func:`to_torch` writes back."""


def _named_parameters(model: Any) -> list[tuple[str, Any]]:
    torch = _torch()

    if isinstance(model, torch.nn.Module):
        return list(model.named_parameters())
    pairs = list(model)
    if not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in pairs):
        raise TypeError(
            "from_torch: pass the model (a torch.nn.Module) or its named_parameters(), "
            "(name, tensor) pairs."
        )
    return pairs


def from_torch(
    optimizer: Any,
    model: Any,
    scheduler: Any = None,
    *,
    steps_per_epoch: int | None = None,
    step_in_epoch: int | None = None,
    schedules: Sequence[Schedule | Mapping[str, Schedule]] | None = None,
    count: int | None = None,
    fractional_epochs: FractionalEpochs | None = None,
) -> TorchRun:
    """A live ``torch.optim.SGD`` run (and its learning-rate scheduler), in sgdx.

    Stepping on with the returned ``tx``, ``state`` and ``params`` computes what stepping on
    in torch computes: every group's hyperparameters and flags, every momentum buffer
    (parameters that never had a gradient start theirs at their first gradient, as in
    torch), and the learning rate of every later step, from the scheduler's own position.

    The scheduler (any of ``torch.optim.lr_scheduler``'s that :mod:`sgdx.schedules` has,
    nested ``SequentialLR`` / ``ChainedScheduler`` included) becomes one schedule per group,
    and a momentum schedule where it cycles momentum (``OneCycleLR``, ``CyclicLR``).
    A scheduler stepped after every ``optimizer.step()`` is at update ``last_epoch``. One
    stepped once per epoch needs ``steps_per_epoch`` and ``step_in_epoch`` (the updates taken
    in the current epoch, which torch does not store). A ``CosineAnnealingWarmRestarts``
    stepped after every update with a fractional epoch (its documented
    ``scheduler.step(epoch + i / iters)``) needs ``steps_per_epoch=iters`` and
    ``fractional_epochs="i"`` (or ``"i + 1"`` for ``epoch + (i + 1) / iters``): its position
    is read from its ``last_epoch`` and ``T_cur``. ``ReduceLROnPlateau`` becomes
    ``run.plateau``, with torch's best, bad-epoch and cooldown state, stepped with a metric
    like torch's. A scheduler that cannot be converted (a custom class, a ``LambdaLR``
    lambda that JAX cannot trace) raises a ``TypeError`` saying to pass ``schedules``. What
    cannot be carried exactly is refused before anything is built: a scheduler that is not
    torch's (timm's), one bound to another optimizer, one built before ``add_param_group``
    other than those that drive the new group from its own lr as torch does (``StepLR``,
    ``MultiStepLR``, ``ExponentialLR``, ``ConstantLR``, ``LinearLR``, ``PolynomialLR``, and
    ``ReduceLROnPlateau`` with one ``min_lr``): pass ``scheduler=None``, ``schedules`` and
    ``count`` for those; one stepped with fractional epochs without ``fractional_epochs``.
    A scheduler that multiplies the lr (those six, nested or chained) goes on from each
    group's lr now, as torch's steps do (an lr set by hand included). Every conversion (and
    every ``schedules=`` given beside a torch scheduler) is checked against torch's own
    scheduler, stepped on a copy for the next 256 scheduler steps, and refused where the
    two differ (an lr set by hand on a scheduler with a closed form, for one). Every group
    key that is not SGD's (timm's ``lr_scale``, ...) is kept for :func:`to_torch`. A parameter with
    ``requires_grad=False`` stays frozen (``param_groups(..., frozen=...)``: its gradient is
    ignored, as autograd leaves its ``grad`` ``None``), in its group and with its buffer.

    Args:
      optimizer: a ``torch.optim.SGD``.
      model: its model (``torch.nn.Module``) or ``model.named_parameters()``.
      scheduler: its ``torch.optim.lr_scheduler`` scheduler, or ``None``.
      steps_per_epoch: updates per scheduler step, for a scheduler stepped per epoch.
      step_in_epoch: updates taken since the last scheduler step (with ``steps_per_epoch``).
      schedules: instead of converting the scheduler, one ``count -> lr`` per param group,
        over scheduler steps (``count`` = ``scheduler.last_epoch``), or a mapping
        ``{"learning_rate": ..., "momentum": ...}`` for a scheduler that also cycles
        momentum (required then: the momentum travels with the learning rate).
      count: with ``schedules`` and no torch scheduler to read it from: the schedules'
        position, the updates (scheduler steps) the run has taken.
      fractional_epochs: for a ``CosineAnnealingWarmRestarts`` stepped after every update
        with ``epoch + i / steps_per_epoch`` (``"i"``) or ``epoch + (i + 1) /
        steps_per_epoch`` (``"i + 1"``), ``i`` the update's batch in its epoch.

    Returns:
      A :class:`TorchRun`; hand it back with :func:`to_torch`.

    Raises:
      TypeError: not an SGD optimizer, a scheduler that cannot be converted.
      ValueError: ``steps_per_epoch`` without ``step_in_epoch`` (or out of range), a
        parameter of the optimizer that is not in the model.
    """
    torch = _torch()

    if not isinstance(optimizer, torch.optim.SGD):
        raise TypeError(f"from_torch takes a torch.optim.SGD, got {type(optimizer).__name__}.")
    named = _named_parameters(model)
    name_of = {id(p): n for n, p in named}
    order = [p for g in optimizer.param_groups for p in g["params"]]
    unnamed = [i for i, p in enumerate(order) if id(p) not in name_of]
    if unnamed:
        raise ValueError(
            f"from_torch: the optimizer's parameters {unnamed[:5]} are not in the model; pass "
            "the model whose parameters the optimizer holds."
        )
    names = tuple(name_of[id(p)] for p in order)
    if fractional_epochs is not None:
        if scheduler is None or steps_per_epoch is None or step_in_epoch is not None:
            raise ValueError(
                "from_torch: fractional_epochs needs the scheduler and steps_per_epoch (the "
                "run's len(loader)); step_in_epoch is read from the scheduler's T_cur."
            )
        if schedules is not None:
            raise ValueError("from_torch: pass fractional_epochs or schedules=, not both.")
    elif steps_per_epoch is not None and (
        step_in_epoch is None or not 0 <= step_in_epoch < steps_per_epoch
    ):
        raise ValueError(
            "from_torch: a scheduler stepped once per epoch needs step_in_epoch, the updates "
            f"taken since its last step (0 <= step_in_epoch < {steps_per_epoch}), which torch "
            f"does not store; got {step_in_epoch!r}."
        )
    if scheduler is not None:
        _check_scheduler(scheduler, optimizer, fractional=fractional_epochs is not None)
        if count is not None:
            raise ValueError(
                "from_torch: count= is for schedules= without a torch scheduler; the "
                "scheduler's own position (last_epoch) is used."
            )
    elif schedules is not None and count is None:
        raise ValueError(
            "from_torch: schedules= without a torch scheduler needs count=, the updates the "
            "run has taken (the schedules' position), or every schedule would restart at 0."
        )
    is_plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    steps = 0 if scheduler is None or is_plateau else _scheduler_steps(scheduler)
    steps = steps if count is None else count
    count = steps * (steps_per_epoch or 1) + (step_in_epoch or 0)
    lrs: list[Schedule] = []
    epoch = None
    if fractional_epochs is not None:
        assert steps_per_epoch is not None
        lrs, steps = _fractional(scheduler, optimizer, steps_per_epoch, fractional_epochs)
        count = steps  # the scheduler is stepped once per update
        epoch = functools.partial(
            _fractional_epoch, steps_per_epoch=steps_per_epoch, fractional_epochs=fractional_epochs
        )
    n_groups = len(optimizer.param_groups)
    if schedules is not None and len(schedules) != n_groups:
        raise ValueError(f"from_torch: schedules= needs {n_groups} schedules, one per group.")
    momenta: list[Schedule | None] = [None] * n_groups
    if schedules is not None:
        lrs, momenta = _given_schedules(schedules, scheduler)
    elif scheduler is not None and not is_plateau and epoch is None:
        lrs = [_schedule(scheduler, i) for i in range(n_groups)]
        momenta = [_momentum_schedule(scheduler, i) for i in range(n_groups)]
    # the scheduler as it is now, on a stand-in optimizer: checked against here, and
    # stepped forward by to_torch
    detached = None if scheduler is None else _detached(scheduler, optimizer)
    if scheduler is not None and not is_plateau:
        _check_against_torch(detached, lrs, momenta, steps, epoch)
    if steps_per_epoch is not None and epoch is None:
        per = functools.partial(_schedules.per_epoch, steps_per_epoch=steps_per_epoch)
        lrs = [per(s) for s in lrs]
        momenta = [None if m is None else per(m) for m in momenta]
    scheduled = schedules is not None or (scheduler is not None and not is_plateau)

    labels = {}
    configs: dict[str, dict[str, Any] | None] = {}
    for i, group in enumerate(optimizer.param_groups):
        label = str(i)
        labels.update({name_of[id(p)]: label for p in group["params"]})
        momentum = float(group["momentum"])
        config: dict[str, Any] = {
            "learning_rate": lrs[i] if scheduled else float(group["lr"]),
            "momentum": momenta[i] or momentum or None,
            "dampening": float(group["dampening"]),
            "weight_decay": float(group["weight_decay"]) or None,
            "nesterov": bool(group["nesterov"]),
            "maximize": bool(group["maximize"]),
        }
        configs[label] = config
    frozen = [n for n, _ in named if n not in labels]
    if frozen:
        labels.update({n: "frozen" for n in frozen})
        configs["frozen"] = None
    params = {n: jnp.asarray(_to_numpy(p)) for n, p in named}
    # torch never updates a parameter with requires_grad=False (its grad stays None)
    no_grad = {n: not p.requires_grad for n, p in named}
    tx = param_groups(labels, configs, frozen=no_grad if any(no_grad.values()) else None)
    flags = tuple((bool(g["nesterov"]), bool(g["maximize"])) for g in optimizer.param_groups)
    state = load_state_dict(
        optimizer.state_dict(),
        tx.init(params),
        params,
        [*names, *frozen],  # the checkpoint numbers the optimizer's; the rest are frozen
        nesterov={str(i): f[0] for i, f in enumerate(flags)},
        maximize={str(i): f[1] for i, f in enumerate(flags)},
        count=count,
    )
    plateau = plateau_state = None
    if is_plateau:
        plateau = reduce_lr_on_plateau(
            mode=scheduler.mode,
            factor=scheduler.factor,
            patience=scheduler.patience,
            threshold=scheduler.threshold,
            threshold_mode=scheduler.threshold_mode,
            cooldown=scheduler.cooldown,
            min_lr={str(i): m for i, m in enumerate(_plateau_min_lrs(scheduler, n_groups))},
            eps=scheduler.eps,
        )
        plateau_state = ReduceLROnPlateauState(  # host state: torch's Python float best
            best=np.asarray(float(scheduler.best)),
            num_bad_epochs=np.asarray(scheduler.num_bad_epochs, np.int32),
            cooldown_counter=np.asarray(scheduler.cooldown_counter, np.int32),
            last_epoch=np.asarray(scheduler.last_epoch, np.int32),
        )
    return TorchRun(
        tx=tx,
        state=state,  # type: ignore[arg-type]
        params=params,
        plateau=plateau,
        plateau_state=plateau_state,
        names=names,
        flags=flags,
        steps_per_epoch=steps_per_epoch,
        fractional_epochs=fractional_epochs,
        scheduler=detached,
        scheduler_steps=steps,
        group_keys=tuple(
            {k: v for k, v in g.items() if k not in ("params", "param_names", *_SGD_KEYS)}
            for g in optimizer.param_groups
        ),
    )


class TorchCheckpoint(NamedTuple):
    """What :func:`to_torch` writes: torch's ``load_state_dict`` arguments."""

    optimizer: dict[str, Any]
    """For ``optimizer.load_state_dict``."""
    scheduler: dict[str, Any] | None
    """For ``scheduler.load_state_dict`` (``None`` without a scheduler)."""
    parameters: dict[str, Any]
    """The parameters as torch tensors by name, for ``model.load_state_dict(...,
    strict=False)`` or copying into the model."""
    step_in_epoch: int | None
    """For a scheduler stepped per epoch: the updates already taken in the current epoch."""


def to_torch(
    run: TorchRun,
    state: ParamGroupsState,
    params: Params,
    plateau_state: ReduceLROnPlateauState | None = None,
) -> TorchCheckpoint:
    """Hands a :func:`from_torch` run back to torch, where it stands now.

    ``optimizer.load_state_dict(ckpt.optimizer)`` and ``scheduler.load_state_dict(
    ckpt.scheduler)`` on the torch optimizer and scheduler of the run (built as before), and
    the parameters copied into the model, make torch step on exactly as sgdx would have:
    the momentum buffers, each group's ``lr`` (the next step's, as torch holds it between
    steps) and the scheduler's position. The scheduler's state is torch's own: a copy of
    the scheduler as it was handed over is stepped forward to the current update.

    Args:
      run: what :func:`from_torch` returned.
      state: the sgdx state now (``run.state`` stepped on).
      params: the parameters now.
      plateau_state: for a ``ReduceLROnPlateau`` run, its state now.

    Returns:
      A :class:`TorchCheckpoint`.

    Raises:
      ValueError: a state that is behind the point where the run was handed over, or a
        plateau run without its ``plateau_state``; a state or parameters that are not this
        run's (other groups, other parameter names or shapes).
    """
    torch = _torch()

    groups = _groups(state)
    labels = [str(i) for i in range(len(run.flags))]
    if sorted(str(g) for g in groups) != sorted(labels):
        raise ValueError(
            f"to_torch: the state has groups {sorted(map(str, groups))}, the run {labels}: pass "
            "this run's state (run.state stepped on)."
        )
    shapes = {
        name: jnp.shape(leaf)
        for name, leaf in zip(leaf_names(params), jax.tree.leaves(params), strict=True)
    }
    for name, leaf in run.params.items():
        if name not in shapes or shapes[name] != jnp.shape(leaf):
            got = "missing" if name not in shapes else f"of shape {shapes[name]}"
            raise ValueError(
                f"to_torch: the parameter {name!r} is {got}; the run's has shape "
                f"{jnp.shape(leaf)}. Pass the run's parameters (run.params stepped on), each "
                "with torch's shape."
            )
    count = int(next(iter(groups.values())).count)
    per = run.steps_per_epoch or 1
    frozen = [name for name in leaf_names(params) if name not in set(run.names)]
    written = state_dict(
        state,
        params,
        [*run.names, *frozen],
        nesterov={label: f[0] for label, f in zip(labels, run.flags, strict=True)},
        maximize={label: f[1] for label, f in zip(labels, run.flags, strict=True)},
    )
    for entry, keys in zip(written["param_groups"], run.group_keys, strict=True):
        for key, value in keys.items():  # timm's lr_scale, layer_decay, a user's key, ...
            entry.setdefault(key, copy.deepcopy(value))
    scheduler_state = None
    if run.scheduler is not None:
        fractional = run.fractional_epochs is not None
        updates = (count if fractional else count // per) - run.scheduler_steps
        if updates < 0:
            raise ValueError(
                f"to_torch: the state is at update {count}, before the run was handed over "
                "to sgdx; sgdx cannot step torch's scheduler back."
            )
        epoch = None
        if fractional and updates:  # the epoch the run passed after its last update
            assert run.fractional_epochs is not None
            epoch = _fractional_epoch(count - 1, per, run.fractional_epochs)
        scheduler_state = _scheduler_state(
            run.scheduler, 0 if fractional else updates, written, plateau_state, epoch
        )
    tensors = {
        dotted(path): torch.from_numpy(np.array(leaf))
        for path, leaf in tree_flatten_with_path(params)[0]
    }
    return TorchCheckpoint(
        optimizer=written,
        scheduler=scheduler_state,
        parameters=tensors,
        step_in_epoch=count % per if run.steps_per_epoch else None,
    )
