"""``torch.optim.SGD.state_dict()`` <-> sgdx state. torch is imported only to export.

The sgdx side is an optimizer whose hyperparameters live in its state, as torch's do in
its ``param_groups``: :func:`sgdx.param_groups` (one sgdx group per torch group) or
``sgdx.inject_hyperparams(sgdx.sgd)`` (a single group), in PyTorch's convention.

Parameters are matched by name. ``names`` lists the pytree paths, dotted
(``params["fc1"]["weight"]`` is ``"fc1.weight"``, list index ``i`` is ``"i"``), in the
order of torch's optimizer: group by group, as ``state_dict()["param_groups"][i]["params"]``
numbers them. For one group built from ``model.parameters()`` that is
``[name for name, _ in model.named_parameters()]``; state dicts saved by an optimizer built
from ``model.named_parameters()`` carry these names (``param_names``) themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import DictKey, GetAttrKey, SequenceKey, tree_flatten_with_path

from sgdx import _tree
from sgdx._base import Params
from sgdx._groups import ParamGroupsState
from sgdx._inject import InjectHyperparamsState
from sgdx._momentum import TraceState
from sgdx._transforms import ScaleByLearningRateState

__all__ = ["load_state_dict", "state_dict"]

HYPERPARAMETERS = {
    "lr": "learning_rate",
    "momentum": "momentum",
    "dampening": "dampening",
    "weight_decay": "weight_decay",
}
State = ParamGroupsState | InjectHyperparamsState


def _key_name(key: Any) -> str:
    if isinstance(key, DictKey):
        return str(key.key)
    if isinstance(key, SequenceKey):
        return str(key.idx)
    if isinstance(key, GetAttrKey):
        return str(key.name)
    return str(key)


def leaf_names(params: Params) -> list[str]:
    """Dotted names of the parameter leaves, in ``jax.tree.leaves`` order."""
    return [".".join(_key_name(k) for k in path) for path, _ in tree_flatten_with_path(params)[0]]


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
    if isinstance(state, ParamGroupsState):
        return {label: group for label, group in state.groups.items()}
    if isinstance(state, InjectHyperparamsState):
        return {None: state}
    raise TypeError(
        f"Expected the state of sgdx.param_groups(...) or sgdx.inject_hyperparams(sgdx.sgd)(...), "
        f"got {type(state).__name__}: torch's state_dict carries hyperparameters per group, so "
        "the sgdx state must hold them too."
    )


def _trace(group: InjectHyperparamsState) -> tuple[int, TraceState]:
    for i, inner in enumerate(group.inner_state):
        if isinstance(inner, TraceState):
            return i, inner
    raise TypeError(
        "The sgdx group has no PyTorch momentum buffer (is it convention='sutskever'? convert "
        "with sgdx.conventions first)."
    )


def _members(group: InjectHyperparamsState) -> list[bool]:
    """Which leaves a group optimizes: the others have ``None`` buffers."""
    _, trace = _trace(group)
    buffers = jax.tree.leaves(trace.momentum_buffer, is_leaf=lambda x: x is None)
    return [b is not None for b in buffers]


def _to_numpy(tensor: Any) -> np.ndarray:
    """A copy: torch updates its buffers in place, and a JAX array must never alias one."""
    tensor = tensor.detach().cpu()
    if str(tensor.dtype) == "torch.bfloat16":
        return np.array(tensor.float().numpy()).astype(jnp.bfloat16)
    return np.array(tensor.numpy(), copy=True)


def _check_sgd(state_dict: Mapping[str, Any]) -> None:
    if not isinstance(state_dict, Mapping) or {"state", "param_groups"} - set(state_dict):
        raise ValueError(
            "Not an optimizer state_dict: expected the keys 'state' and 'param_groups'."
        )
    for i, group in enumerate(state_dict["param_groups"]):
        missing = [
            k for k in (*HYPERPARAMETERS, "nesterov", "maximize", "params") if k not in group
        ]
        if missing:
            raise ValueError(
                f"param_groups[{i}] lacks {missing}: not a torch.optim.SGD state_dict."
            )
    for index, entry in state_dict["state"].items():
        other = sorted(set(entry) - {"momentum_buffer"})
        if other:
            raise ValueError(
                f"state[{index}] holds {other}: not a torch.optim.SGD state_dict (SGD keeps only "
                "'momentum_buffer')."
            )


def load_state_dict(
    state_dict: Mapping[str, Any],
    state: State,
    params: Params,
    names: Sequence[str] | None = None,
    *,
    count: int | None = None,
) -> State:
    """The sgdx state continuing a ``torch.optim.SGD`` run from its ``state_dict()``.

    Every torch group is matched to the sgdx group that holds exactly its parameters; its
    ``lr``, ``momentum``, ``dampening`` and ``weight_decay`` replace the group's
    hyperparameters, and each ``momentum_buffer`` becomes the parameter's buffer (a
    parameter torch holds no buffer for starts its buffer from its next gradient, as in
    torch). ``nesterov`` and ``maximize`` are fixed when the sgdx optimizer is built.
    Everything is checked before anything is built: a bad checkpoint raises and the given
    state is left as it was.

    Args:
      state_dict: ``torch.optim.SGD(...).state_dict()``.
      state: the sgdx state to fill (from ``tx.init(params)``), of :func:`sgdx.param_groups`
        or ``sgdx.inject_hyperparams(sgdx.sgd)``, PyTorch convention.
      params: the parameter pytree.
      names: dotted parameter names in torch's optimizer order (see the module doc);
        optional when the state_dict has ``param_names``.
      count: set the update count (the schedules' argument) to this, e.g. the number of
        steps torch took; by default it is kept.

    Returns:
      The new state.

    Raises:
      ValueError: not an SGD state_dict, a different number of parameters or groups,
        unknown names, a group with no sgdx counterpart, a buffer of the wrong shape.
      TypeError: a state without hyperparameters, or in the Sutskever convention.
    """
    _check_sgd(state_dict)
    torch_groups = state_dict["param_groups"]
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
    if len(torch_groups) != len(groups):
        raise ValueError(
            f"The state_dict has {len(torch_groups)} param groups, the sgdx optimizer "
            f"{len(groups)}; build the sgdx optimizer with the same groups."
        )
    buffers = state_dict["state"]
    new_groups: dict[str | None, InjectHyperparamsState] = {}
    for i, torch_group in enumerate(torch_groups):
        members = {positions[k] for k in torch_group["params"]}
        label = next(
            (
                lb
                for lb, g in groups.items()
                if {j for j, m in enumerate(_members(g)) if m} == members
            ),
            "no match",
        )
        if label == "no match":
            raise ValueError(
                f"param_groups[{i}] ({[names[k] for k in torch_group['params']][:5]}...) matches "
                "no sgdx group: every torch group needs an sgdx group with exactly its parameters."
            )
        group = groups[label]
        position, trace = _trace(group)
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
                    f"The momentum buffer of {names[k]!r} has shape {value.shape}, the parameter "
                    f"{jnp.shape(leaves[leaf])}."
                )
            buffer_leaves[leaf] = jnp.asarray(value, buffer_leaves[leaf].dtype)
            flag_leaves[leaf] = jnp.ones((), jnp.bool_)
        new_trace = TraceState(
            jax.tree.unflatten(treedef, buffer_leaves),
            _tree.stack(jax.tree.unflatten(treedef, flag_leaves), jnp.bool_),
        )
        hyperparams = {
            ours: jnp.asarray(float(torch_group[theirs]), group.hyperparams[ours].dtype)
            for theirs, ours in HYPERPARAMETERS.items()
            if ours in group.hyperparams
        }
        inner = list(group.inner_state)
        inner[position] = new_trace
        group_count = group.count if count is None else jnp.asarray(count, jnp.int32)
        inner = [
            s._replace(count=group_count) if isinstance(s, ScaleByLearningRateState) else s
            for s in inner
        ]
        new_groups[label] = InjectHyperparamsState(group_count, hyperparams, tuple(inner))
    if isinstance(state, ParamGroupsState):
        return state._replace(groups={str(k): v for k, v in new_groups.items()})
    return new_groups[None]


def state_dict(
    state: State,
    params: Params,
    names: Sequence[str],
    *,
    nesterov: bool | Mapping[str, bool] = False,
    maximize: bool | Mapping[str, bool] = False,
    initial_lr: float | Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """A ``torch.optim.SGD`` state_dict for an sgdx state, for ``optimizer.load_state_dict``.

    Groups come in the order of their first parameter in ``names``; a parameter whose buffer
    has not started gets no ``state`` entry, as in torch. ``nesterov`` and ``maximize`` are
    not in the sgdx state: give them (per group label, if they differ).

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
    import torch

    positions = _positions(names, params)
    rank = {leaf: k for k, leaf in enumerate(positions)}
    groups = _groups(state)
    ordered = sorted(
        groups.items(), key=lambda item: min(rank[j] for j, m in enumerate(_members(item[1])) if m)
    )

    def per_group(value: Any, label: str | None) -> Any:
        return value[label] if isinstance(value, Mapping) else value

    torch_state: dict[int, dict[str, Any]] = {}
    param_groups = []
    index = 0
    for label, group in ordered:
        members = sorted((rank[j] for j, m in enumerate(_members(group)) if m))
        _, trace = _trace(group)
        buffers = jax.tree.leaves(trace.momentum_buffer, is_leaf=lambda x: x is None)
        flags = jax.tree.leaves(
            _tree.per_leaf(trace.initialized, trace.momentum_buffer, "momentum flags"),
            is_leaf=lambda x: x is None,
        )
        entry: dict[str, Any] = {
            theirs: float(group.hyperparams.get(ours, 0.0))
            for theirs, ours in HYPERPARAMETERS.items()
        }
        entry.update(
            nesterov=bool(per_group(nesterov, label)),
            maximize=bool(per_group(maximize, label)),
            foreach=None,
            differentiable=False,
            fused=None,
        )
        if initial_lr is not None:
            entry["initial_lr"] = float(per_group(initial_lr, label))
        entry["params"] = list(range(index, index + len(members)))
        entry["param_names"] = [names[k] for k in members]
        for k in members:
            leaf = positions[k]
            if bool(flags[leaf]):
                torch_state[index] = {"momentum_buffer": torch.from_numpy(np.array(buffers[leaf]))}
            index += 1
        param_groups.append(entry)
    return {"state": torch_state, "param_groups": param_groups}
