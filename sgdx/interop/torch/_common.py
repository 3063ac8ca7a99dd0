"""What the torch interop shares: torch imported on use, parameter names, the sgdx
state's groups, tensors copied to NumPy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.tree_util import tree_flatten_with_path

from sgdx._base import Params
from sgdx._groups import ParamGroupsState, groups_of, membership
from sgdx._inject import InjectHyperparamsState
from sgdx._momentum import TraceState
from sgdx._sgd_state import SGDState, dotted

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
