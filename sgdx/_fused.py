"""`fused_sgd`: torch.optim.SGD's step as one in-place native pass over all leaves on CPU.

The kernel (``_native/sgd_step.cc``, compiled and loaded by ``_build``) is an XLA FFI
target; where it cannot run, or a step needs what it does not cover, the pure-JAX path
(``sgd``'s ``update`` then ``apply_updates``) runs instead. Both give the same numbers: the
kernel follows the reference's order of operations.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from sgdx import _hyperparams, _tree
from sgdx._alias import sgd
from sgdx._base import (
    OptState,
    Params,
    ScalarOrSchedule,
    TransformInitFn,
    TransformUpdateFn,
    apply_updates,
)
from sgdx._build import TARGETS, native_status
from sgdx._momentum import TraceState
from sgdx._transforms import ScaleByLearningRateState


@functools.cache
def _warn_fallback(reason: str) -> None:
    """One warning per process when the kernel cannot run (its reason is the status')."""
    warnings.warn(
        f"sgdx.fused_sgd: the native kernel is not available ({reason}); steps run the pure-"
        "JAX path (the same numbers, slower). sgdx.native_status() says why.",
        RuntimeWarning,
        stacklevel=3,
    )


def _struct(shape: tuple[int, ...], dtype: Any) -> Any:
    return jax.ShapeDtypeStruct(shape, dtype)  # type: ignore[no-untyped-call]


# XLA's compile time grows faster than linearly with the number of aliased operands of one
# custom call (500 leaves in one call: 10 s; in calls of 32: under 1 s), so a tree is
# updated in calls over at most this many leaves each.
_LEAVES_PER_CALL = 32


def _native_step(
    hyper: jax.Array,
    flags: jax.Array,
    params: list[jax.Array],
    grads: list[jax.Array],
    buffers: list[jax.Array],
    *,
    nesterov: bool,
    maximize: bool,
) -> tuple[list[jax.Array], list[jax.Array]]:
    """The kernel over the leaves, in place: returns the new params and buffers. ``flags``
    (bool, one per leaf) tells which buffers have started."""
    target = TARGETS[np.dtype(hyper.dtype)]
    new_params: list[jax.Array] = []
    new_buffers: list[jax.Array] = []
    for start in range(0, len(params), _LEAVES_PER_CALL):
        p, g, b = (x[start : start + _LEAVES_PER_CALL] for x in (params, grads, buffers))
        n = len(p)
        call = jax.ffi.ffi_call(
            target,
            tuple(_struct(x.shape, x.dtype) for x in (*p, *b)),
            # operands: hyper, flags, n params, n grads, n buffers; results: params, buffers,
            # each written over its operand
            input_output_aliases={
                **{2 + i: i for i in range(n)},
                **{2 + 2 * n + i: n + i for i in range(n)},
            },
            vmap_method="sequential",
        )
        out = call(
            hyper, flags[start : start + n], *p, *g, *b, nesterov=nesterov, maximize=maximize
        )
        new_params += out[:n]
        new_buffers += out[n:]
    return new_params, new_buffers


def _reference_leaves(
    hyper: jax.Array,
    flags: jax.Array,
    params: list[jax.Array],
    grads: list[jax.Array],
    buffers: list[jax.Array],
    *,
    nesterov: bool,
    maximize: bool,
) -> tuple[list[jax.Array], list[jax.Array]]:
    """:func:`_native_step` in pure JAX: :func:`sgdx.sgd` with the hyperparameters held in
    ``hyper``, on the same operands. Its derivatives are the native step's."""
    learning_rate, momentum, dampening, weight_decay = hyper
    tx = sgd(learning_rate, momentum, dampening, weight_decay, nesterov, maximize=maximize)
    state = tuple(
        TraceState(buffers, flags) if isinstance(s, TraceState) else s for s in tx.init(params)
    )
    updates, state = tx.update(grads, state, params)
    trace = next(s for s in state if isinstance(s, TraceState))
    return apply_updates(params, updates), trace.momentum_buffer


def _differentiable_native_step(nesterov: bool, maximize: bool) -> Any:
    """:func:`_native_step`, differentiated (``jax.grad``, ``jax.jvp``, ...) through
    :func:`_reference_leaves`, since the kernel has no derivative of its own: every operand,
    ``hyper`` included, is an argument, so derivatives reach the hyperparameters."""
    native = jax.custom_jvp(functools.partial(_native_step, nesterov=nesterov, maximize=maximize))
    reference = functools.partial(_reference_leaves, nesterov=nesterov, maximize=maximize)
    native.defjvp(lambda primals, tangents: jax.jvp(reference, primals, tangents))
    return native


class FusedSGD(NamedTuple):
    """:func:`sgdx.sgd` with a fused ``step``; ``init`` and ``update`` are sgd's own."""

    init: TransformInitFn
    update: TransformUpdateFn
    step: Any
    """``step(params, grads, state) -> (params, state)``: update and apply in one pass."""


def fused_sgd(
    learning_rate: ScalarOrSchedule,
    momentum: ArrayLike = 0.0,
    dampening: ArrayLike = 0.0,
    weight_decay: ArrayLike = 0.0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
) -> FusedSGD:
    """``torch.optim.SGD(..., fused=True)``: :func:`sgdx.sgd` whose ``step`` updates the
    parameters and momentum buffers in one pass over memory.

    ``step(params, grads, state)`` equals ``update`` followed by :func:`sgdx.apply_updates`
    (the reference path, which it falls back to) and returns ``(params, state)``. On CPU,
    for float32 or float64 parameters (all of one dtype) and momentum on, it runs a native
    kernel over the leaves that have a gradient (a ``None`` gradient leaves its parameter and
    buffer as they are): 20 bytes of memory traffic per float32 parameter,
    in place when the caller donates ``params`` and ``state`` (``jax.jit(..., donate_argnums
    =(0, 2))``). Derivatives of a step (``jax.grad`` with respect to the parameters or a
    hyperparameter, ``jax.jvp``) are the reference path's; ``jax.vmap`` runs the kernel once
    per batch element. With more than one device the step is the reference path, which XLA
    partitions like any jitted computation, so sharded parameters and buffers keep their
    sharding.

    Every array that crosses a ``jax.jit`` boundary costs a few microseconds of dispatch, so
    a tree of thousands of small leaves called as a jit of its own is dominated by that
    overhead, not by the update. Call ``step`` inside the jitted training step (the
    gradients then never cross the boundary) and keep the leaf count small: stack repeated
    layers and ``lax.scan`` over them, or keep the parameters flat (``flat, unravel =
    jax.flatten_util.ravel_pytree(params)``, differentiate ``loss(unravel(flat))``, step the
    one array). ``examples/many_leaves.py`` compares the three layouts.

    Args:
      learning_rate, momentum, dampening, weight_decay, nesterov, maximize: as
        :func:`sgdx.sgd` (PyTorch convention).

    Returns:
      A :class:`FusedSGD`, whose state is :func:`sgdx.sgd`'s.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import sgdx
      >>> opt = sgdx.fused_sgd(0.5, momentum=0.5)
      >>> params = {"w": jnp.ones(3, jnp.float32)}
      >>> state = opt.init(params)
      >>> step = jax.jit(opt.step, donate_argnums=(0, 2))
      >>> params, state = step(params, {"w": jnp.ones(3, jnp.float32)}, state)
      >>> print(params["w"])
      [0.5 0.5 0.5]
    """
    tx = sgd(learning_rate, momentum, dampening, weight_decay, nesterov, maximize=maximize)
    scalar = _hyperparams.check_learning_rate(learning_rate)

    def reference(params: Params, grads: Params, state: OptState) -> tuple[Params, OptState]:
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    native_step = _differentiable_native_step(nesterov, maximize)

    def step(params: Params, grads: Params, state: OptState) -> tuple[Params, OptState]:
        kinds = [type(s) for s in state] if isinstance(state, tuple) else []
        if (
            TraceState not in kinds
            or jax.default_backend() != "cpu"
            or jax.device_count() > 1
            # a state of another configuration: the reference path says which
            or not _tree.same_structure(
                jax.tree.structure(jax.eval_shape(tx.init, params)), jax.tree.structure(state)
            )
        ):
            return reference(params, grads, state)
        trace_at = kinds.index(TraceState)
        trace, scale = state[trace_at], state[-1]
        # None is a leaf in every tree, so that the leaves line up: a None gradient (a frozen
        # parameter, or a non-array leaf as Equinox passes them) leaves its parameter, buffer
        # and flag as they are, and only the leaves with a gradient reach the kernel.
        g_leaves, treedef = jax.tree.flatten(grads, is_leaf=lambda x: x is None)
        flat = [
            jax.tree.flatten(tree, is_leaf=lambda x: x is None)
            for tree in (params, trace.momentum_buffer)
        ]
        if any(not _tree.same_structure(t, treedef) for _, t in flat):
            return reference(params, grads, state)  # which names the mismatched path
        p_leaves, b_leaves = (leaves for leaves, _ in flat)
        flag_at = list(itertools.accumulate(b is not None for b in b_leaves))  # 1-based
        live = [i for i, g in enumerate(g_leaves) if g is not None]
        operands = [(p_leaves[i], g_leaves[i], b_leaves[i]) for i in live]
        dtypes = {np.dtype(jnp.result_type(x)) for x in itertools.chain(*operands) if x is not None}
        if (
            not live
            or any(
                p is None or b is None or not jnp.shape(p) == jnp.shape(g) == jnp.shape(b)
                for p, g, b in operands
            )
            or jnp.shape(trace.initialized) != (flag_at[-1],)
            or len(dtypes) != 1
            or not dtypes <= TARGETS.keys()
        ):
            return reference(params, grads, state)
        status = native_status()
        if not status.available:
            _warn_fallback(status.reason)
            return reference(params, grads, state)
        lr = _hyperparams.learning_rate_at(learning_rate, scalar, scale.count)
        dtype = dtypes.pop()
        hyper = jnp.stack([jnp.asarray(v, dtype) for v in (lr, momentum, dampening, weight_decay)])
        at = np.array([flag_at[i] - 1 for i in live])
        new_p, new_b = native_step(
            hyper,
            trace.initialized[at],
            *([leaves[i] for i in live] for leaves in (p_leaves, g_leaves, b_leaves)),
        )
        for i, p, b in zip(live, new_p, new_b, strict=True):
            p_leaves[i], b_leaves[i] = p, b
        started = np.zeros(trace.initialized.shape, np.bool_)
        started[at] = True
        new_trace = TraceState(
            jax.tree.unflatten(treedef, b_leaves),
            trace.initialized | (jnp.asarray(started) & (momentum != 0)),
        )
        new_scale = ScaleByLearningRateState(count=_tree.safe_increment(scale.count))
        new_state = list(state)
        new_state[trace_at], new_state[-1] = new_trace, new_scale
        return jax.tree.unflatten(treedef, p_leaves), tuple(new_state)

    return FusedSGD(tx.init, tx.update, step)
