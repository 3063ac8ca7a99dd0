"""``torch.optim.SGD`` and its learning-rate scheduler <-> sgdx. torch is imported on use.

Two levels:

- A live run, in one call each way: :func:`from_torch` takes a ``torch.optim.SGD``, its
  model (or named parameters) and its scheduler, and returns the sgdx transformation, its
  state and the parameters, positioned so that stepping on in JAX is stepping on in torch;
  :func:`to_torch` writes the optimizer and scheduler state dicts (and the parameters) that
  torch's ``load_state_dict`` calls accept, so torch goes on exactly as sgdx would have.
- A checkpoint into an sgdx optimizer you built: :func:`load_state_dict` fills a
  :func:`sgdx.param_groups` or ``sgdx.inject_hyperparams(sgdx.sgd)`` state from
  ``optimizer.state_dict()``, and :func:`state_dict` writes one.

Parameters are matched by name: the dotted pytree paths (``params["fc1"]["weight"]`` is
``"fc1.weight"``, list index ``i`` is ``"i"``), in the order of torch's optimizer (group by
group, as ``state_dict()["param_groups"][i]["params"]`` numbers them). For one group built
from ``model.parameters()`` that is ``[name for name, _ in model.named_parameters()]``;
state dicts saved by an optimizer built from ``model.named_parameters()`` carry them.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import tree_flatten_with_path

from sgdx import _tree
from sgdx import schedules as _schedules
from sgdx._base import GradientTransformation, Params, Schedule
from sgdx._groups import ParamGroupsState, groups_of, membership, param_groups
from sgdx._inject import InjectHyperparamsState
from sgdx._momentum import TraceState
from sgdx._plateau import ReduceLROnPlateau, ReduceLROnPlateauState, reduce_lr_on_plateau
from sgdx._sgd_state import SGDState, dotted, momentum_buffers

__all__ = [
    "TorchCheckpoint",
    "TorchRun",
    "from_torch",
    "load_state_dict",
    "state_dict",
    "to_torch",
]

HYPERPARAMETERS = {
    "lr": "learning_rate",
    "momentum": "momentum",
    "dampening": "dampening",
    "weight_decay": "weight_decay",
}
# What torch.optim.SGD.__setstate__ fills in for checkpoints written before these existed.
_BACKFILLED = {
    "nesterov": False,
    "maximize": False,
    "foreach": None,
    "differentiable": False,
    "fused": False,
}
_SGD_KEYS = (*HYPERPARAMETERS, *_BACKFILLED)
State = ParamGroupsState | InjectHyperparamsState
Flag = bool | Mapping[str, bool]


def _torch() -> Any:
    """The torch module, or an ImportError that says how to install it."""
    try:
        import torch
    except ImportError as error:
        raise ModuleNotFoundError(
            "sgdx.interop.torch needs PyTorch, which is not installed: pip install "
            f"'sgdx[torch]' (or torch itself). ({error})",
            name="torch",
        ) from None
    return torch


def leaf_names(params: Params) -> list[str]:
    """Dotted names of the parameter leaves, in ``jax.tree.leaves`` order."""
    return [dotted(path) for path, _ in tree_flatten_with_path(params)[0]]


def _positions(names: Sequence[str], params: Params) -> list[int]:
    """For each torch position, the index of the matching leaf."""
    leaves = leaf_names(params)
    index = {name: i for i, name in enumerate(leaves)}
    unknown = [n for n in names if n not in index]
    missing = [n for n in leaves if n not in set(names)]
    if unknown or missing or len(names) != len(leaves):
        raise ValueError(
            f"The torch parameter names do not match the parameter tree: {len(names)} names "
            f"for {len(leaves)} parameters; names not in the tree: {unknown[:5]}; parameters "
            f"without a name: {missing[:5]}. Tree names are dotted paths, e.g. {leaves[:3]}."
        )
    return [index[n] for n in names]


def _groups(state: State) -> dict[str | None, InjectHyperparamsState]:
    return groups_of(
        state, "torch's state_dict carries hyperparameters per group, so the sgdx state must too"
    )


def _members(state: State, n_leaves: int) -> dict[str | None, list[int]]:
    """The leaves each group optimizes."""
    if isinstance(state, ParamGroupsState):
        return {label: leaves for label, leaves in membership(state).items()}
    return {None: list(range(n_leaves))}


def _trace(group: InjectHyperparamsState) -> TraceState | None:
    """The group's PyTorch momentum state, or ``None`` without momentum."""
    inner = group.inner_state
    momentum = inner.momentum if isinstance(inner, SGDState) else None
    return momentum if isinstance(momentum, TraceState) else None


def _to_numpy(tensor: Any) -> np.ndarray:
    """A copy: torch updates its buffers in place, and a JAX array must never alias one. A
    sparse tensor (a sparse ``Embedding``'s buffer) is made dense: the same values, as sgdx
    keeps dense buffers; a NumPy array or nested list (a hand-built state dict) is taken
    as it is."""
    if not hasattr(tensor, "detach"):
        return np.array(tensor)
    tensor = tensor.detach().cpu()
    if tensor.layout != _torch().strided:
        tensor = tensor.to_dense()
    if str(tensor.dtype) == "torch.bfloat16":
        return np.array(tensor.float().numpy()).astype(jnp.bfloat16)
    return np.array(tensor.numpy(), copy=True)


def _per_group(value: Flag, label: str | None, name: str) -> bool:
    if isinstance(value, Mapping):
        assert label is not None
        if label not in value:
            raise KeyError(f"{name}: no entry for group {label!r}; give one per group label.")
        return bool(value[label])
    return bool(value)


def _checked_groups(state_dict: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The param groups, with torch's back-filled defaults, after checking it is SGD's."""
    if not isinstance(state_dict, Mapping) or {"state", "param_groups"} - set(state_dict):
        raise ValueError(
            "Not an optimizer state_dict: expected the keys 'state' and 'param_groups'."
        )
    groups = []
    for i, group in enumerate(state_dict["param_groups"]):
        missing = [k for k in (*HYPERPARAMETERS, "params") if k not in group]
        if missing:
            raise ValueError(
                f"param_groups[{i}] lacks {missing}: not a torch.optim.SGD state_dict."
            )
        groups.append({**_BACKFILLED, **group})
    for index, entry in state_dict["state"].items():
        other = sorted(set(entry) - {"momentum_buffer"})
        if other:
            raise ValueError(
                f"state[{index}] holds {other}: not a torch.optim.SGD state_dict (SGD keeps only "
                "'momentum_buffer')."
            )
    return groups


def _check_group(
    i: int,
    torch_group: Mapping[str, Any],
    group: InjectHyperparamsState,
    label: str | None,
    nesterov: Flag,
    maximize: Flag,
) -> None:
    """Raises a ValueError naming the group and the flag where the checkpoint's
    configuration is not the sgdx optimizer's."""
    where = f"param_groups[{i}]" + (f" (sgdx group {label!r})" if label is not None else "")
    for flag, given in (("nesterov", nesterov), ("maximize", maximize)):
        mine = _per_group(given, label, flag)
        if bool(torch_group[flag]) != mine:
            raise ValueError(
                f"{where}: the checkpoint has {flag}={torch_group[flag]}, the sgdx optimizer "
                f"{flag}={mine}. Build the sgdx optimizer with {flag}={torch_group[flag]} (and "
                f"pass {flag}= here to say so)."
            )
    has_buffer = _trace(group) is not None
    if (float(torch_group["momentum"]) != 0) != has_buffer:
        raise ValueError(
            f"{where}: the checkpoint has momentum={torch_group['momentum']}, the sgdx "
            f"optimizer has momentum {'on' if has_buffer else 'off'}. Build it with the "
            "checkpoint's momentum."
        )
    ours = group.hyperparams.get("dampening", 0.0)
    if float(torch_group["dampening"]) != float(ours):
        raise ValueError(
            f"{where}: the checkpoint has dampening={torch_group['dampening']}, the sgdx "
            f"optimizer dampening={float(ours)}. Build it with the checkpoint's dampening."
        )
    if "weight_decay" not in group.hyperparams and float(torch_group["weight_decay"]) != 0:
        raise ValueError(
            f"{where}: the checkpoint has weight_decay={torch_group['weight_decay']}, the sgdx "
            "optimizer was built without weight decay (None or 0). Build it with a weight decay."
        )


def load_state_dict(
    state_dict: Mapping[str, Any],
    state: State,
    params: Params,
    names: Sequence[str] | None = None,
    *,
    nesterov: Flag,
    maximize: Flag,
    count: int | None = None,
) -> State:
    """The sgdx state continuing a ``torch.optim.SGD`` run from its ``state_dict()``.

    Every torch group is matched to the sgdx group that holds exactly its parameters; its
    ``lr``, ``momentum`` and ``weight_decay`` replace the group's hyperparameters, and each
    ``momentum_buffer`` becomes the parameter's buffer (a parameter torch holds no buffer
    for starts its buffer from its next gradient, as in torch). The checkpoint's
    ``nesterov`` and ``maximize`` must be the ones you built the sgdx optimizer with (say
    which with the arguments), and its momentum on or off, dampening and weight decay on or
    off must match too; a checkpoint from an older torch without ``maximize`` / ``foreach``
    / ``fused`` / ``differentiable`` gets torch's defaults. Everything is checked before
    anything is built: a bad checkpoint raises and the given state is left as it was.

    Args:
      state_dict: ``torch.optim.SGD(...).state_dict()``.
      state: the sgdx state to fill (from ``tx.init(params)``), of :func:`sgdx.param_groups`
        or ``sgdx.inject_hyperparams(sgdx.sgd)``, PyTorch convention.
      params: the parameter pytree.
      names: dotted parameter names in torch's optimizer order (see the module doc);
        optional when the state_dict has ``param_names``.
      nesterov, maximize: the sgdx optimizer's flags, one for all groups or per label.
      count: the update count to set (the schedules' argument): where the run is, e.g.
        ``scheduler.last_epoch`` for a scheduler stepped after every update. A torch
        optimizer's checkpoint does not record it; by default the state's is kept.
        :func:`from_torch` reads it off the scheduler.

    Returns:
      The new state.

    Raises:
      ValueError: not an SGD state_dict, a different number of parameters or groups,
        unknown names, a group with no sgdx counterpart, a buffer of the wrong shape, a
        flag or hyperparameter that does not match (naming the group and the flag).
      TypeError: a state without hyperparameters.
    """
    torch_groups = _checked_groups(state_dict)
    if names is None:
        if not all("param_names" in g for g in torch_groups):
            raise ValueError(
                "This state_dict has no 'param_names': pass names=, the dotted parameter names "
                "in the optimizer's order."
            )
        names = [n for g in torch_groups for n in g["param_names"]]
    positions = _positions(names, params)
    leaves = jax.tree.leaves(params)
    groups = _groups(state)
    members = _members(state, len(leaves))
    if len(torch_groups) != len(groups):
        raise ValueError(
            f"The state_dict has {len(torch_groups)} param groups, the sgdx optimizer "
            f"{len(groups)}; build the sgdx optimizer with the same groups."
        )
    buffers = state_dict["state"]
    new_groups: dict[str | None, InjectHyperparamsState] = {}
    for i, torch_group in enumerate(torch_groups):
        wanted = sorted(positions[k] for k in torch_group["params"])
        label = next((lb for lb, m in members.items() if sorted(m) == wanted), "no match")
        if label == "no match":
            raise ValueError(
                f"param_groups[{i}] ({[names[k] for k in torch_group['params']][:5]}...) matches "
                "no sgdx group: every torch group needs an sgdx group with exactly its parameters."
            )
        group = groups[label]
        _check_group(i, torch_group, group, label, nesterov, maximize)
        inner = group.inner_state
        trace = _trace(group)
        if trace is not None:
            buffer_leaves, treedef = jax.tree.flatten(
                trace.momentum_buffer, is_leaf=lambda x: x is None
            )
            flag_leaves = jax.tree.leaves(
                _tree.per_leaf(trace.initialized, trace.momentum_buffer, "momentum flags"),
                is_leaf=lambda x: x is None,
            )
            for k in torch_group["params"]:
                leaf = positions[k]
                entry = buffers.get(k, {}).get("momentum_buffer")
                if entry is None:
                    buffer_leaves[leaf] = _tree.zeros_like(buffer_leaves[leaf])
                    flag_leaves[leaf] = jnp.asarray(np.False_)
                    continue
                value = _to_numpy(entry)
                if value.shape != jnp.shape(leaves[leaf]):
                    raise ValueError(
                        f"The momentum buffer of {names[k]!r} has shape {value.shape}, the "
                        f"parameter {jnp.shape(leaves[leaf])}."
                    )
                buffer_leaves[leaf] = jnp.asarray(value, buffer_leaves[leaf].dtype)
                flag_leaves[leaf] = jnp.ones((), jnp.bool_)
            inner = inner._replace(
                momentum=TraceState(
                    jax.tree.unflatten(treedef, buffer_leaves),
                    _tree.stack(jax.tree.unflatten(treedef, flag_leaves), jnp.bool_),
                )
            )
        hyperparams = {
            ours: jnp.asarray(float(torch_group[theirs]), group.hyperparams[ours].dtype)
            for theirs, ours in HYPERPARAMETERS.items()
            if ours in group.hyperparams
        }
        group_count = group.count if count is None else jnp.asarray(count, jnp.int32)
        new_groups[label] = InjectHyperparamsState(group_count, hyperparams, inner)
    if isinstance(state, ParamGroupsState):
        return state._replace(groups={str(k): v for k, v in new_groups.items()})
    return new_groups[None]


def state_dict(
    state: State,
    params: Params,
    names: Sequence[str],
    *,
    nesterov: Flag,
    maximize: Flag,
    initial_lr: float | Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """A ``torch.optim.SGD`` state_dict for an sgdx state, for ``optimizer.load_state_dict``.

    Each group's ``lr`` is the learning rate of the next update, as torch's is between
    steps (the state holds it: see :func:`sgdx.inject_hyperparams`). Groups come in the
    order of their first parameter in ``names``; a parameter whose buffer has not started
    gets no ``state`` entry, as in torch. ``nesterov`` and ``maximize`` are not in the sgdx
    state: give the ones the optimizer was built with (per group label, if they differ).

    Args:
      state: a :func:`sgdx.param_groups` or ``sgdx.inject_hyperparams(sgdx.sgd)`` state.
      params: the parameter pytree.
      names: dotted parameter names in torch's optimizer order (see the module doc); they
        are also written as each group's ``param_names``.
      nesterov, maximize: the optimizer's flags, or a mapping from group label to flag.
      initial_lr: written as ``initial_lr`` (a torch scheduler's base learning rate).

    Returns:
      ``{"state": {...}, "param_groups": [...]}`` with torch tensors.
    """
    torch = _torch()

    positions = _positions(names, params)
    rank = {leaf: k for k, leaf in enumerate(positions)}
    groups = _groups(state)
    members = _members(state, len(positions))
    ordered = sorted(
        (label for label in groups if members[label]),
        key=lambda label: min(rank[j] for j in members[label]),
    )
    leaf_name = leaf_names(params)
    torch_state: dict[int, dict[str, Any]] = {}
    torch_groups = []
    index = 0
    for label in ordered:
        group = groups[label]
        ranks = sorted(rank[j] for j in members[label])
        entry: dict[str, Any] = {
            theirs: float(group.hyperparams.get(ours, 0.0))
            for theirs, ours in HYPERPARAMETERS.items()
        }
        entry.update(
            nesterov=_per_group(nesterov, label, "nesterov"),
            maximize=_per_group(maximize, label, "maximize"),
            foreach=None,
            differentiable=False,
            fused=None,
        )
        if initial_lr is not None:
            entry["initial_lr"] = float(
                initial_lr[label] if isinstance(initial_lr, Mapping) else initial_lr  # type: ignore[index]
            )
        entry["params"] = list(range(index, index + len(ranks)))
        entry["param_names"] = [names[k] for k in ranks]
        started = momentum_buffers(group) if _trace(group) is not None else {}
        for k in ranks:
            buffer = started.get(leaf_name[positions[k]])
            if buffer is not None:
                torch_state[index] = {"momentum_buffer": torch.from_numpy(np.array(buffer))}
            index += 1
        torch_groups.append(entry)
    return {"state": torch_state, "param_groups": torch_groups}


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
    torch = _torch()

    lr_scheduler = torch.optim.lr_scheduler
    kind = type(scheduler)
    if kind is lr_scheduler.SequentialLR:
        children = [_schedule(child, group) for child in scheduler._schedulers]
        return _schedules.sequential(children, list(scheduler._milestones))
    if kind is lr_scheduler.ChainedScheduler:
        children = [_schedule(child, group) for child in scheduler._schedulers]
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
    base = float(scheduler.base_lrs[group])
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


def _check_scheduler(scheduler: Any, optimizer: Any) -> None:
    """Raises unless ``scheduler`` is torch's, drives ``optimizer`` with all its groups, and
    is at a whole step: what from_torch can carry exactly."""
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
    for child in _children(scheduler):
        if child.optimizer is not optimizer:
            raise ValueError(
                f"from_torch: the {type(child).__name__} drives another optimizer than the one "
                "given; pass the scheduler built on this optimizer."
            )
        per_group = getattr(child, "base_lrs", getattr(child, "min_lrs", None))
        if per_group is not None and len(per_group) != n_groups:
            raise ValueError(
                f"from_torch: the optimizer has {n_groups} param groups, but its "
                f"{type(child).__name__} was built for {len(per_group)} (a group added with "
                "add_param_group after the scheduler was built): the scheduler's rule for "
                "the new groups is not stored. Pass scheduler=None, schedules=[...] (one per "
                "group) and count=."
            )
        t_cur, last = getattr(child, "T_cur", 0), getattr(child, "last_epoch", 0)
        if float(t_cur) != int(t_cur) or float(last) != int(last):
            raise ValueError(
                f"from_torch: the {type(child).__name__} was stepped with a fractional epoch "
                f"(T_cur={t_cur}, last_epoch={last}), as scheduler.step(epoch + "
                "i / iters) does; its schedule over whole steps would not continue it. Pass "
                "schedules=[...] (one count -> lr per group over updates, e.g. "
                "sgdx.schedules.cosine_annealing_warm_restarts over updates) and count=."
            )
    cycling = [c for c in _children(scheduler) if getattr(c, "cycle_momentum", False)]
    if cycling and cycling != [scheduler]:
        raise TypeError(
            f"from_torch: a {type(cycling[0]).__name__} that cycles momentum inside a "
            f"{kind.__name__} cannot be converted; pass scheduler=None, schedules=[{{"
            "'learning_rate': ..., 'momentum': ...}, ...] (one per group) and count=."
        )


def _scheduler_steps(scheduler: Any) -> int:
    """How many times ``scheduler.step()`` has been called since it was built."""
    torch = _torch()

    if type(scheduler) is torch.optim.lr_scheduler.ChainedScheduler:
        return _scheduler_steps(scheduler._schedulers[0])
    return int(scheduler.last_epoch)


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
    """Updates per scheduler step for a scheduler stepped once per epoch, else ``None``."""
    scheduler: Any
    """A copy of the torch scheduler as it was, on a stand-in optimizer with the same
    groups (:func:`to_torch` steps a copy of it forward to write torch's own state)."""
    scheduler_steps: int
    """``scheduler.step()`` calls the scheduler had taken when the run was handed over."""
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
    in the current epoch, which torch does not store). ``ReduceLROnPlateau`` becomes
    ``run.plateau``, with torch's best, bad-epoch and cooldown state, stepped with a metric
    like torch's. A scheduler that cannot be converted (a custom class, a ``LambdaLR``
    lambda that JAX cannot trace) raises a ``TypeError`` saying to pass ``schedules``. What
    cannot be carried exactly is refused before anything is built: a scheduler that is not
    torch's (timm's), one bound to another optimizer or built before ``add_param_group``, one
    stepped with fractional epochs (``CosineAnnealingWarmRestarts.step(epoch + i / iters)``):
    pass ``scheduler=None``, ``schedules`` and ``count`` for those. Every group key that is
    not SGD's (timm's ``lr_scale``, ...) is kept for :func:`to_torch`.

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
    if steps_per_epoch is not None and (
        step_in_epoch is None or not 0 <= step_in_epoch < steps_per_epoch
    ):
        raise ValueError(
            "from_torch: a scheduler stepped once per epoch needs step_in_epoch, the updates "
            f"taken since its last step (0 <= step_in_epoch < {steps_per_epoch}), which torch "
            f"does not store; got {step_in_epoch!r}."
        )
    if scheduler is not None:
        _check_scheduler(scheduler, optimizer)
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
    n_groups = len(optimizer.param_groups)
    if schedules is not None and len(schedules) != n_groups:
        raise ValueError(f"from_torch: schedules= needs {n_groups} schedules, one per group.")
    lrs: list[Schedule] = []
    momenta: list[Schedule | None] = [None] * n_groups
    if schedules is not None:
        lrs, momenta = _given_schedules(schedules, scheduler)
    elif scheduler is not None and not is_plateau:
        lrs = [_schedule(scheduler, i) for i in range(n_groups)]
        momenta = [_momentum_schedule(scheduler, i) for i in range(n_groups)]
    if steps_per_epoch is not None:
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
            min_lr={str(i): float(m) for i, m in enumerate(scheduler.min_lrs)},
            eps=scheduler.eps,
        )
        dtype = plateau.init().best.dtype
        plateau_state = ReduceLROnPlateauState(
            best=jnp.asarray(float(scheduler.best), dtype),
            num_bad_epochs=jnp.asarray(scheduler.num_bad_epochs, jnp.int32),
            cooldown_counter=jnp.asarray(scheduler.cooldown_counter, jnp.int32),
            last_epoch=jnp.asarray(scheduler.last_epoch, jnp.int32),
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
        scheduler=None if scheduler is None else _detached(scheduler, optimizer),
        scheduler_steps=steps,
        group_keys=tuple(
            {k: v for k, v in g.items() if k not in ("params", "param_names", *_SGD_KEYS)}
            for g in optimizer.param_groups
        ),
    )


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
    cycling = [c for c in _children(scheduler) if getattr(c, "cycle_momentum", False)]
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
    scheduler_state: dict[str, Any] | None = None
    if run.scheduler is not None:
        scheduler = copy.deepcopy(run.scheduler)
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
        else:
            steps = count // per - run.scheduler_steps
            if steps < 0:
                raise ValueError(
                    f"to_torch: the state is at update {count}, before the run was handed over "
                    "to sgdx; sgdx cannot step torch's scheduler back."
                )
            with warnings.catch_warnings():  # the stand-in optimizer's step is not wrapped
                warnings.simplefilter("ignore")
                for _ in range(steps):
                    scheduler.optimizer.step()
                    scheduler.step()
        # the scheduler's keys (initial_lr, max_lr, ...) and torch's own learning rates
        for entry, group in zip(
            written["param_groups"], scheduler.optimizer.param_groups, strict=True
        ):
            extra = {k: v for k, v in group.items() if k not in ("params", "param_names", *entry)}
            entry.update(extra, lr=group["lr"], momentum=group["momentum"])
        scheduler_state = scheduler.state_dict()
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
