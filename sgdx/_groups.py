"""Param groups: torch's per-group hyperparameters for labelled parts of a pytree."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.tree_util import keystr, tree_flatten_with_path

from sgdx import _hyperparams, _step, _tree
from sgdx._base import GradientTransformation, Params, PyTree, Updates
from sgdx._inject import InjectHyperparamsState, inject_hyperparams
from sgdx._sgd import sgd

_SGD_ARGUMENTS = tuple(inspect.signature(sgd).parameters)

GroupConfig = Mapping[str, Any] | None


class ParamGroupsState(NamedTuple):
    """State of :func:`param_groups`: one injected-hyperparameter sgd state per group."""

    groups: dict[str, InjectHyperparamsState]
    """Keyed by group label; frozen groups (configured ``None``) have no entry."""
    membership: jax.Array
    """int32, one per parameter in ``jax.tree.leaves(params)`` order: the position of its
    group in ``sorted(groups)``, or -1 for a frozen parameter. Which parameters a group
    owns, read off the state whatever it holds (a group without momentum keeps no
    per-parameter arrays); what torch's ``param_groups[i]["params"]`` records."""


def membership(state: ParamGroupsState) -> dict[str, list[int]]:
    """For each group label of ``state``, the positions (in ``jax.tree.leaves(params)``
    order) of the parameters it optimizes."""
    labels = sorted(state.groups)
    owners = np.asarray(state.membership).tolist()
    return {label: [i for i, g in enumerate(owners) if g == k] for k, label in enumerate(labels)}


def _labels(labels: PyTree | Callable[[Params], PyTree], params: Params) -> list[str]:
    tree = labels(params) if callable(labels) else labels
    params_leaves, params_def = jax.tree.flatten(params)
    label_leaves, label_def = jax.tree.flatten(tree)
    if not _tree.same_structure(label_def, params_def):
        raise ValueError(
            "param_groups: the labels must have the parameters' tree structure (one label "
            f"per parameter); got {label_def} for parameters {params_def}."
        )
    del params_leaves
    return label_leaves


def _mask(tree: PyTree, labels: list[str], keep: str) -> PyTree:
    """``tree`` with ``None`` at every leaf not labelled ``keep``."""
    leaves, treedef = jax.tree.flatten(tree, is_leaf=lambda x: x is None)
    return jax.tree.unflatten(
        treedef, [x if label == keep else None for x, label in zip(leaves, labels, strict=True)]
    )


def _scaled(config: dict[str, Any], label: str) -> dict[str, Any]:
    """``config`` with its ``learning_rate_scale`` applied to its learning rate."""
    if "learning_rate_scale" not in config:
        return config
    config = dict(config)
    scale = config.pop("learning_rate_scale")
    _hyperparams.check_hyperparameter(scale, "learning_rate_scale")
    number = _hyperparams.concrete(scale)
    if number is not None and number < 0:
        raise ValueError(f"param_groups: group {label!r} has learning_rate_scale {scale} < 0.")
    learning_rate = config.get("learning_rate")
    if callable(learning_rate):
        config["learning_rate"] = lambda count: scale * learning_rate(count)
    elif learning_rate is not None:
        config["learning_rate"] = scale * learning_rate
    return config


def param_groups(
    labels: PyTree | Callable[[Params], PyTree],
    groups: Mapping[str, GroupConfig],
    *,
    frozen: PyTree | Callable[[Params], PyTree] | None = None,
    **defaults: Any,
) -> GradientTransformation:
    """``torch.optim.SGD`` with param groups: different hyperparameters per labelled part.

    ``labels`` gives each parameter a group label (a pytree of strings with the parameters'
    structure, or a function ``params -> labels``). ``groups`` maps every label to that
    group's overrides of ``defaults`` (the arguments of :func:`sgdx.sgd`:
    ``learning_rate``, ``momentum``, ``dampening``, ``weight_decay``, ``nesterov``,
    ``maximize``, ...), or to ``None`` for a frozen group, whose parameters get no update
    (a ``None`` update) and keep no buffer. This is torch's
    ``SGD([{"params": ..., "lr": 0.1}, {"params": ...}], lr=0.01, momentum=0.9)``: a key a
    group leaves out is inherited from the defaults. A group's ``learning_rate_scale`` multiplies
    the learning rate it has (inherited or its own, a number or a schedule): one shared
    schedule with a per-group multiplier, as Detectron2's ``BIAS_LR_FACTOR`` or timm's
    ``lr_scale`` (layer decay) give.

    Each group's numeric hyperparameters live in the state (as with
    :func:`inject_hyperparams`): read and change them with :func:`get_hyperparams` /
    :func:`set_hyperparams` and ``group=label``, between steps and without recompiling.
    To start optimizing a frozen group mid-run (torch's ``add_param_group``), build the
    transform with its new configuration and carry the state over with
    :func:`add_param_groups`. ``frozen`` marks single parameters as torch's
    ``requires_grad=False`` does: they stay in their group, with their buffer, but their
    gradients are ignored (taken as ``None``), so they and their buffers are never updated.

    Args:
      labels: a pytree of group labels, or a function of the parameters returning one.
      groups: label -> overrides (a mapping of :func:`sgdx.sgd` arguments) or ``None``.
      frozen: a pytree of Python bools with the parameters' structure (or a function of the
        parameters returning one): ``True`` for a parameter whose gradient is ignored.
      **defaults: :func:`sgdx.sgd` arguments shared by all groups.

    Returns:
      A :class:`~sgdx.GradientTransformation` with a :class:`ParamGroupsState`.

    Raises:
      ValueError: for an unknown hyperparameter name, a label with no group, an invalid
        value (torch's messages) or labels that do not match the parameters.

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> params = {"head": jnp.ones(2), "body": jnp.ones(2), "frozen": jnp.ones(2)}
      >>> labels = {"head": "head", "body": "body", "frozen": "frozen"}
      >>> tx = sgdx.param_groups(
      ...     labels, {"head": {"learning_rate": 0.5}, "body": {}, "frozen": None},
      ...     learning_rate=0.25, momentum=0.9)
      >>> state = tx.init(params)
      >>> updates, state = tx.update({k: jnp.ones(2) for k in params}, state, params)
      >>> print(updates["head"], updates["body"], updates["frozen"])
      [-0.5 -0.5] [-0.25 -0.25] None
    """
    if not isinstance(groups, Mapping):
        raise TypeError(
            "param_groups(labels, groups, **defaults): groups must map each label to its "
            f"overrides, got {type(groups).__name__}. torch's [{{'params': head, 'lr': 0.1}}, "
            "{'params': body}] is labels={...: 'head' or 'body' per parameter} and groups="
            "{'head': {'learning_rate': 0.1}, 'body': {}}."
        )
    for name, config in [("defaults", defaults), *groups.items()]:
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(
                f"param_groups: group {name!r} must map sgdx.sgd argument names to values (or "
                f"be None, frozen), got {type(config).__name__}."
            )
        unknown = sorted(set(config or {}) - {*_SGD_ARGUMENTS, "learning_rate_scale"})
        if unknown:
            raise ValueError(
                f"param_groups: unknown hyperparameter(s) {unknown} in {name!r}; sgdx.sgd takes "
                f"{list(_SGD_ARGUMENTS)} (torch's 'lr' is 'learning_rate'), and a group "
                "learning_rate_scale."
            )
    if "learning_rate" not in defaults and any(
        config is not None and "learning_rate" not in config for config in groups.values()
    ):
        raise ValueError(
            "param_groups: a group has no learning_rate; give one in defaults or in every group."
        )
    optimizers = {
        label: inject_hyperparams(sgd)(**_scaled({**defaults, **config}, label))
        for label, config in groups.items()
        if config is not None
    }

    def check_labels(params: Params) -> list[str]:
        leaves = _labels(labels, params)
        for (path, _), label in zip(tree_flatten_with_path(params)[0], leaves, strict=True):
            if not isinstance(label, Hashable):
                raise TypeError(
                    f"param_groups: the parameter at {keystr(path)} has label {label!r} "
                    f"({type(label).__name__}), which cannot name a group; a label is a "
                    f"group's key, such as a string: one of {sorted(groups)}."
                )
            if label not in groups:
                raise ValueError(
                    f"param_groups: the parameter at {keystr(path)} has label {label!r}, which "
                    f"is not a group; groups are {sorted(groups)} (map a label to None to "
                    "freeze its parameters)."
                )
        return leaves

    def trainable(grads: Updates, params: Params) -> Updates:
        """``grads`` with ``None`` for every frozen parameter."""
        if frozen is None:
            return grads
        flags = frozen(params) if callable(frozen) else frozen
        flag_leaves, flag_def = jax.tree.flatten(flags)
        grad_leaves, grad_def = jax.tree.flatten(grads, is_leaf=_tree.is_none)
        if not _tree.same_structure(flag_def, jax.tree.structure(params)) or not all(
            isinstance(f, bool | np.bool_) for f in flag_leaves
        ):
            raise TypeError(
                "param_groups: frozen must be a pytree of Python bools with the parameters' "
                f"structure (True: the gradient is ignored); got {flag_def} of "
                f"{sorted({type(f).__name__ for f in flag_leaves})} for parameters "
                f"{jax.tree.structure(params)}."
            )
        return jax.tree.unflatten(
            grad_def, [None if f else g for g, f in zip(grad_leaves, flag_leaves, strict=True)]
        )

    def init_fn(params: Params) -> ParamGroupsState:
        leaves = check_labels(params)
        position = {label: k for k, label in enumerate(sorted(optimizers))}
        owners = np.array([position.get(label, -1) for label in leaves], np.int32)
        return ParamGroupsState(
            {label: tx.init(_mask(params, leaves, label)) for label, tx in optimizers.items()},
            _tree.host_array(owners, params),
        )

    def checked(state: ParamGroupsState, params: Params | None) -> list[str]:
        """The labels of ``params``' leaves, after checking ``state`` against them."""
        _tree.check_state(state, ParamGroupsState, "param_groups")
        if set(state.groups) != set(optimizers):
            raise ValueError(
                f"param_groups: the state has groups {sorted(state.groups)}, this optimizer "
                f"{sorted(optimizers)}. The state was made by a differently labelled "
                "param_groups; build it with this optimizer's init (or carry it over with "
                "sgdx.add_param_groups)."
            )
        if params is None:
            raise ValueError(
                "param_groups needs the parameters: call update(updates, state, params)."
            )
        return check_labels(params)

    def merged(tree: PyTree, parts: dict[str, PyTree], leaves: list[str]) -> PyTree:
        """``tree`` with each group's leaves taken from its part (frozen ones kept)."""
        merged_leaves, treedef = jax.tree.flatten(tree, is_leaf=_tree.is_none)
        for label, part in parts.items():
            for i, x in enumerate(jax.tree.leaves(part, is_leaf=_tree.is_none)):
                if leaves[i] == label:
                    merged_leaves[i] = x
        return jax.tree.unflatten(treedef, merged_leaves)

    def update_fn(
        updates: Updates, state: ParamGroupsState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, ParamGroupsState]:
        leaves = checked(state, params)
        updates = trainable(updates, params)
        none = jax.tree.map(lambda _: None, updates)  # a frozen group's update: None
        parts, new_states = {}, {}
        for label, tx in optimizers.items():
            parts[label], new_states[label] = tx.update(
                _mask(updates, leaves, label),
                state.groups[label],
                _mask(params, leaves, label),
                **extra_args,
            )
        return merged(none, parts, leaves), ParamGroupsState(new_states, state.membership)

    def step_fn(
        params: Params, grads: Updates, state: ParamGroupsState
    ) -> tuple[Params, ParamGroupsState]:
        """Each group's step (one kernel pass per group, with its hyperparameters)."""
        leaves = checked(state, params)
        grads = trainable(grads, params)
        parts, new_states = {}, {}
        for label, tx in optimizers.items():
            parts[label], new_states[label] = _step.run(
                tx, _mask(params, leaves, label), _mask(grads, leaves, label), state.groups[label]
            )
        return merged(params, parts, leaves), ParamGroupsState(new_states, state.membership)

    return _step.with_step(init_fn, update_fn, step_fn)


def add_param_groups(
    state: ParamGroupsState, tx: GradientTransformation, params: Params
) -> ParamGroupsState:
    """Carries a :func:`param_groups` state over to ``tx``, which has more groups.

    torch's ``optimizer.add_param_group``: the groups ``state`` already has keep their
    state (momentum buffers, hyperparameters, counts); groups that are new in ``tx`` (for
    example a backbone that was frozen and is now unfrozen) start fresh.

    Raises:
      ValueError: when a group of ``state`` is missing from ``tx`` or now covers different
        parameters.
    """
    _tree.check_state(state, ParamGroupsState, "add_param_groups")
    fresh = tx.init(params)
    old_members, new_members = membership(state), membership(fresh)
    for label, old in state.groups.items():
        if label not in fresh.groups:
            raise ValueError(
                f"add_param_groups: group {label!r} is in the state but not in the new "
                f"optimizer (groups {sorted(fresh.groups)}); torch cannot remove a group either."
            )
        if old_members[label] != new_members[label] or not _tree.same_structure(
            jax.tree.structure(old), jax.tree.structure(fresh.groups[label])
        ):
            raise ValueError(
                f"add_param_groups: group {label!r} covers different parameters in the new "
                "optimizer; existing groups must keep their parameters."
            )
    return ParamGroupsState({**fresh.groups, **state.groups}, fresh.membership)


def groups_of(
    state: InjectHyperparamsState | ParamGroupsState, why: str
) -> dict[str | None, InjectHyperparamsState]:
    """Every group's hyperparameter state, by label (``None`` for a single
    ``inject_hyperparams`` state); a ``TypeError`` saying ``why`` for any other state."""
    if isinstance(state, ParamGroupsState):
        return {label: group for label, group in state.groups.items()}
    if isinstance(state, InjectHyperparamsState):
        return {None: state}
    raise TypeError(
        f"{why}: pass the state of sgdx.inject_hyperparams(sgdx.sgd)(...) or "
        f"sgdx.param_groups(...), got {type(state).__name__}."
    )


def _group_state(
    state: InjectHyperparamsState | ParamGroupsState, group: str | None, who: str
) -> InjectHyperparamsState:
    if isinstance(state, ParamGroupsState):
        if group not in state.groups:
            raise KeyError(
                f"{who}: pass group= one of {sorted(state.groups)} (frozen groups have no "
                f"hyperparameters); got {group!r}."
            )
        return state.groups[group]
    _tree.check_state(state, InjectHyperparamsState, who)
    if group is not None:
        raise KeyError(f"{who}: group={group!r} given, but this state has no param groups.")
    return state


def get_hyperparams(
    state: InjectHyperparamsState | ParamGroupsState, group: str | None = None
) -> dict[str, jax.Array]:
    """The hyperparameters of an :func:`inject_hyperparams` state, or of one group of a
    :func:`param_groups` state: torch's ``optimizer.param_groups[i]``."""
    return dict(_group_state(state, group, "get_hyperparams").hyperparams)


def set_hyperparams(
    state: InjectHyperparamsState | ParamGroupsState, group: str | None = None, **values: Any
) -> InjectHyperparamsState | ParamGroupsState:
    """A copy of ``state`` with new hyperparameter values, used from the next update on.

    torch's ``optimizer.param_groups[i]["lr"] = x``. The values keep the stored dtype and
    shape, so a jitted step does not recompile. Concrete values are validated with torch's
    messages. A hyperparameter that follows a schedule is overwritten by it at the next
    update, as a torch scheduler overwrites ``group["lr"]``.

    Raises:
      KeyError: for an unknown group or hyperparameter name.
      ValueError: for a negative learning rate, momentum or weight decay, or a non-scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> import sgdx
      >>> tx = sgdx.inject_hyperparams(sgdx.sgd)(0.5, momentum=0.5)
      >>> state = sgdx.set_hyperparams(tx.init(jnp.zeros(1)), learning_rate=0.25)
      >>> float(sgdx.get_hyperparams(state)["learning_rate"])
      0.25
    """
    inner = _group_state(state, group, "set_hyperparams")
    hyperparams = dict(inner.hyperparams)
    for name, value in values.items():
        if name not in hyperparams:
            raise KeyError(
                f"{name!r} is not a hyperparameter of this optimizer; it has {sorted(hyperparams)}."
            )
        _hyperparams.check_hyperparameter(value, name)
        hyperparams[name] = jax.numpy.asarray(value, hyperparams[name].dtype)
    updated = inner._replace(hyperparams=hyperparams)
    if isinstance(state, ParamGroupsState):
        return state._replace(groups={**state.groups, group: updated})  # type: ignore[dict-item]
    return updated
