"""sgd's in-place step: one pass of the native kernel (``_native/sgd_step.cc``) over
parameters and momentum buffers, where it can run; ``update`` + ``apply_updates``, the same
numbers, elsewhere.

The kernel follows the reference's order of operations (sgd's chain, then
``apply_updates``); on another platform (chosen at lowering) the reference runs in its
place. With several devices it runs on each device's shards. Derivatives are the
reference's.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdx import _hyperparams, _kernel_primitive, _sgd, _sgd_state, _step, _tree, _warn
from sgdx._base import (
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
    apply_updates,
)
from sgdx._kernel import TARGETS, native_status
from sgdx._momentum import TraceState
from sgdx._sgd_state import SGDState
from sgdx._transforms import ScaleByLearningRateState


@functools.cache
def _warn_unavailable(reason: str) -> None:
    """One warning per process when the kernel cannot run (its reason is the status')."""
    _warn.warn(
        f"sgdx.sgd: the native kernel is not available ({reason}); sgdx.step runs the "
        "pure-JAX path (the same numbers, slower). sgdx.native_status() says why; "
        "fused=False asks for the pure-JAX path without this warning."
    )


def _reference(
    hyper: jax.Array, flags: jax.Array, *leaves: jax.Array, nesterov: bool, maximize: bool
) -> list[jax.Array]:
    """The kernel's pass in pure JAX: sgd's chain with ``hyper`` (in
    :data:`~sgdx._sgd_state.HYPERPARAMETERS` order) on the same operands, then
    ``apply_updates``."""
    n = len(leaves) // 3
    params, grads, buffers = (list(leaves[k * n : (k + 1) * n]) for k in range(3))
    lr, momentum, dampening, weight_decay = hyper  # HYPERPARAMETERS' order
    tx = _sgd.sgd(lr, momentum, dampening, weight_decay, nesterov, maximize=maximize, fused=False)
    state = tx.init(params)._replace(momentum=TraceState(buffers, flags))
    updates, state = tx.update(grads, state, params)
    return [*apply_updates(params, updates), *state.momentum.momentum_buffer]


def with_kernel(
    reference: GradientTransformation,
    learning_rate: ScalarOrSchedule,
    hyperparameters: dict[str, Any],
    *,
    nesterov: bool,
    maximize: bool,
    required: bool,
) -> GradientTransformation:
    """``reference`` (sgd's chain, PyTorch convention with momentum) carrying its in-place
    step. ``hyperparameters``: momentum, dampening and weight decay by name. ``required``
    (``fused=True``): raise where a wrapper hides the step, instead of warning."""
    scalar = _hyperparams.check_learning_rate(learning_rate)
    kernel = _kernel_primitive.in_place(nesterov, maximize, _reference)

    @functools.cache
    def kinds() -> list[type]:
        """The types of the reference's state, field by field."""
        return [type(s) for s in jax.eval_shape(reference.init, {})]

    def native_step(params: Params, grads: Updates, state: OptState) -> tuple[Any, OptState] | None:
        """The kernel's (params, state), or ``None`` where the reference must run."""
        if params is None or not isinstance(state, SGDState) or list(map(type, state)) != kinds():
            return None  # a state of another configuration: the reference says which
        trace = state.momentum
        assert isinstance(trace, TraceState)
        # None is a leaf in every tree, so that the leaves line up: a None gradient (a frozen
        # parameter, or a non-array leaf as Equinox passes them) leaves its parameter, buffer
        # and flag as they are, and only the leaves with a gradient reach the kernel.
        g_leaves, treedef = jax.tree.flatten(grads, is_leaf=_tree.is_none)
        flat = [
            jax.tree.flatten(tree, is_leaf=_tree.is_none)
            for tree in (params, trace.momentum_buffer)
        ]
        if any(not _tree.same_structure(t, treedef) for _, t in flat):
            return None  # the reference names the mismatched path
        p_leaves, b_leaves = (leaves for leaves, _ in flat)
        flag_at = _tree.positions(trace.momentum_buffer)
        live = [i for i, g in enumerate(g_leaves) if g is not None]
        operands = [(p_leaves[i], g_leaves[i], b_leaves[i]) for i in live]
        arrays = all(isinstance(x, jax.Array | np.ndarray) for x in itertools.chain(*operands))
        dtypes = {np.dtype(x.dtype) for x in itertools.chain(*operands) if arrays}
        if (
            not live
            or not arrays
            or any(not jnp.shape(p) == jnp.shape(g) == jnp.shape(b) for p, g, b in operands)
            or jnp.shape(trace.initialized) != (sum(k is not None for k in flag_at),)
            or len(dtypes) != 1
            or not dtypes <= TARGETS.keys()
        ):
            return None
        status = native_status()
        if not status.available:
            _warn_unavailable(status.reason)
            return None
        count = _sgd_state.count(state)
        lr = _hyperparams.learning_rate_at(learning_rate, scalar, count)  # type: ignore[arg-type]
        values = {"learning_rate": lr, **hyperparameters}
        dtype = dtypes.pop()
        hyper = jnp.stack([jnp.asarray(values[k], dtype) for k in _sgd_state.HYPERPARAMETERS])
        at = np.array([flag_at[i] for i in live])
        flags = trace.initialized
        if not np.array_equal(at, np.arange(len(flags))):
            flags = flags[at]  # the flags of the leaves with a gradient
        results = kernel(
            hyper, flags, *(leaves[i] for leaves in (p_leaves, g_leaves, b_leaves) for i in live)
        )
        for i, p, b in zip(live, results[: len(live)], results[len(live) :], strict=True):
            p_leaves[i], b_leaves[i] = p, b
        started = np.zeros(trace.initialized.shape, np.bool_)
        started[at] = True
        momentum = TraceState(
            jax.tree.unflatten(treedef, b_leaves),
            trace.initialized | (jnp.asarray(started) & (hyperparameters["momentum"] != 0)),
        )
        schedule = state.learning_rate
        if isinstance(schedule, ScaleByLearningRateState):
            schedule = ScaleByLearningRateState(_tree.safe_increment(schedule.count))
        return jax.tree.unflatten(treedef, p_leaves), state._replace(
            momentum=momentum, learning_rate=schedule
        )

    def update_fn(
        updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]:
        hidden_by = _step.hidden_by()
        if hidden_by is not None:
            if required:
                raise ValueError(
                    f"sgdx.sgd(..., fused=True): sgdx.step cannot take the native kernel's "
                    f"in-place step through {hidden_by}, which wraps sgd without passing its "
                    "step on. Wrap with sgdx's combinators (chain with sgd last, "
                    "inject_hyperparams, param_groups, skip_nonfinite), or pass fused=None "
                    "to run update + apply_updates here."
                )
            _step.warn_hidden(hidden_by)
        return reference.update(updates, state, params, **extra_args)

    def step_fn(params: Params, grads: Updates, state: OptState) -> tuple[Params, OptState]:
        result = native_step(params, grads, state)
        if result is None:
            updates, state = reference.update(grads, state, params)
            return apply_updates(params, updates), state
        return result

    return _step.with_step(reference.init, update_fn, step_fn)
