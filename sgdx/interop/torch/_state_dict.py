"""``torch.optim.SGD`` state dicts <-> an sgdx ``param_groups`` / ``inject_hyperparams`` state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdx import _tree
from sgdx._base import Params
from sgdx._groups import ParamGroupsState
from sgdx._inject import InjectHyperparamsState
from sgdx._momentum import TraceState
from sgdx._sgd_state import momentum_buffers
from sgdx.interop.torch._common import (
    _BACKFILLED,
    HYPERPARAMETERS,
    Flag,
    State,
    _groups,
    _members,
    _per_group,
    _positions,
    _to_numpy,
    _torch,
    _trace,
    leaf_names,
)


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
    names = _names(torch_groups, names)
    positions = _positions(names, params)
    leaves = jax.tree.leaves(params)
    groups = _groups(state)
    members = _members(state, len(leaves))
    if len(torch_groups) != len(groups):
        raise ValueError(
            f"The state_dict has {len(torch_groups)} param groups, the sgdx optimizer "
            f"{len(groups)}; build the sgdx optimizer with the same groups."
        )
    new_groups: dict[str | None, InjectHyperparamsState] = {}
    for i, torch_group in enumerate(torch_groups):
        label = _matching_group(i, torch_group, positions, members, names)
        group = groups[label]
        _check_group(i, torch_group, group, label, nesterov, maximize)
        inner = group.inner_state
        trace = _trace(group)
        if trace is not None:
            momentum = _loaded_momentum(
                trace, torch_group["params"], state_dict["state"], positions, leaves, names
            )
            inner = inner._replace(momentum=momentum)
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


def _names(torch_groups: list[dict[str, Any]], names: Sequence[str] | None) -> Sequence[str]:
    """The parameters' names in torch's order: given, or the checkpoint's ``param_names``;
    a parameter in two groups is refused, as torch refuses it."""
    if names is None:
        if not all("param_names" in g for g in torch_groups):
            raise ValueError(
                "This state_dict has no 'param_names': pass names=, the dotted parameter names "
                "in the optimizer's order."
            )
        names = [n for g in torch_groups for n in g["param_names"]]
    seen: dict[int, int] = {}
    for i, group in enumerate(torch_groups):
        for k in group["params"]:
            if k in seen:
                raise ValueError(
                    f"some parameters appear in more than one parameter group: parameter {k} "
                    f"is in param_groups[{seen[k]}] and param_groups[{i}]."
                )
            seen[k] = i
    return names


def _matching_group(
    i: int,
    torch_group: dict[str, Any],
    positions: list[int],
    members: dict[str | None, list[int]],
    names: Sequence[str],
) -> str | None:
    """The label of the sgdx group that holds exactly torch group ``i``'s parameters."""
    wanted = sorted(positions[k] for k in torch_group["params"])
    for label, member in members.items():
        if sorted(member) == wanted:
            return label
    raise ValueError(
        f"param_groups[{i}] ({[names[k] for k in torch_group['params']][:5]}...) matches no "
        "sgdx group: every torch group needs an sgdx group with exactly its parameters."
    )


def _loaded_momentum(
    trace: TraceState,
    indices: Sequence[int],
    buffers: Mapping[int, Any],
    positions: list[int],
    leaves: list[Any],
    names: Sequence[str],
) -> TraceState:
    """``trace`` with the checkpoint's ``momentum_buffer`` of each of the group's parameters
    (``indices``, torch's numbering); one torch holds none for starts at its next gradient."""
    buffer_leaves, treedef = jax.tree.flatten(trace.momentum_buffer, is_leaf=_tree.is_none)
    flag_leaves = jax.tree.leaves(
        _tree.per_leaf(trace.initialized, trace.momentum_buffer, "momentum flags"),
        is_leaf=_tree.is_none,
    )
    for k in indices:
        leaf = positions[k]
        entry = buffers.get(k, {}).get("momentum_buffer")
        if entry is None:
            buffer_leaves[leaf] = _tree.zeros_like(buffer_leaves[leaf])
            flag_leaves[leaf] = jnp.asarray(np.False_)
            continue
        value = _to_numpy(entry)
        if value.shape != jnp.shape(leaves[leaf]):
            raise ValueError(
                f"The momentum buffer of {names[k]!r} has shape {value.shape}, the parameter "
                f"{jnp.shape(leaves[leaf])}."
            )
        buffer_leaves[leaf] = jnp.asarray(value, buffer_leaves[leaf].dtype)
        flag_leaves[leaf] = jnp.ones((), jnp.bool_)
    return TraceState(
        jax.tree.unflatten(treedef, buffer_leaves),
        _tree.stack(jax.tree.unflatten(treedef, flag_leaves), jnp.bool_),
    )


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
