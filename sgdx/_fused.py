"""The native paths of `sgd` (``fused``): its standard ``update`` and the in-place
`step`, each one pass of ``_native/sgd_step.cc`` over the leaves on CPU.

The kernel follows the reference's order of operations (``sgd``'s chain, then
``apply_updates``); where it cannot run (another platform, chosen at lowering: the update
is one primitive with a lowering per platform; other dtypes, no kernel) the reference runs
instead, with the same numbers. With several devices the kernel runs on each device's
shards. Derivatives are the reference's.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import SdyShardingRule, custom_partitioning
from jax.interpreters import batching, mlir

from sgdx import _hyperparams, _tree
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
from sgdx._transforms import ScaleByLearningRateState

# XLA's compile time grows faster than linearly with the number of aliased operands of one
# custom call (500 leaves in one call: 10 s; in calls of 32: under 1 s), so a tree is
# updated in calls over at most this many leaves each.
_LEAVES_PER_CALL = 32

# sgd transforms with an in-place step, by their update function (for `step`).
_IN_PLACE: weakref.WeakKeyDictionary[Callable[..., Any], Callable[..., Any]] = (
    weakref.WeakKeyDictionary()
)


@functools.cache
def _warn_fallback(reason: str) -> None:
    """One warning per process when the kernel cannot run (its reason is the status')."""
    warnings.warn(
        f"sgdx.sgd: the native kernel is not available ({reason}); updates run the pure-JAX "
        "path (the same numbers, slower). sgdx.native_status() says why; fused=False "
        "asks for the pure-JAX path without this warning.",
        RuntimeWarning,
        stacklevel=4,
    )


def _call(
    hyper: jax.Array, flags: jax.Array, *leaves: jax.Array, apply: bool, **attrs: Any
) -> tuple[jax.Array, ...]:
    """One kernel call over ``n`` leaves, whose flags are ``flags[offset:offset + n]``
    (``attrs``: ``offset``, ``nesterov``, ``maximize``). ``leaves`` is n params, n grads, n
    buffers; the results are n params written over the params (``apply``) or n updates
    written over the gradients, which they replace (no new arrays), and n buffers written
    over the buffers."""
    n = len(leaves) // 3
    aliases = {2 + 2 * n + i: n + i for i in range(n)}
    aliases.update({(2 if apply else 2 + n) + i: i for i in range(n)})
    # results typed as the operands they overwrite (inside shard_map: varying as they)
    overwritten = leaves[:n] if apply else leaves[n : 2 * n]
    call = jax.ffi.ffi_call(
        TARGETS[np.dtype(hyper.dtype)],
        tuple(jax.typeof(x) for x in (*overwritten, *leaves[2 * n :])),
        input_output_aliases=aliases,
    )
    return tuple(call(hyper, flags, *leaves, apply=apply, **attrs))


def _per_shard(
    hyper: jax.Array, flags: jax.Array, *leaves: jax.Array, **attrs: Any
) -> tuple[jax.Array, ...]:
    """:func:`_call` on each device's shards. The update is elementwise, so each leaf is
    computed in its buffer's sharding (parameters and gradients are resharded to it where
    they differ, as a ZeRO-1 layout's replicated parameters are sliced), and the results
    keep it. Inside ``shard_map`` it is :func:`_call` itself."""
    n = len(leaves) // 3

    def call(*operands: jax.Array) -> tuple[jax.Array, ...]:  # positional only, as it must
        return _call(*operands, **attrs)

    def shardings(mesh: Any, arg_shapes: Any) -> tuple[Any, ...]:
        return tuple(arg_shapes[2 + 2 * n + i].sharding for i in range(n)) * 2

    def partition(mesh: Any, arg_shapes: Any, result_shape: Any) -> tuple[Any, ...]:
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        results = shardings(mesh, arg_shapes)
        return mesh, call, results, (replicated, replicated, *results[:n] * 3)

    partitioned = custom_partitioning(call)
    dims: list[Any] = [
        tuple(f"leaf{i}_{d}" for d in range(x.ndim)) for i, x in enumerate(leaves[:n])
    ]
    partitioned.def_partition(
        infer_sharding_from_operands=lambda mesh, args, result: shardings(mesh, args),
        partition=partition,
        sharding_rule=SdyShardingRule(
            (("hyper",), ("flags",), *dims * 3),  # type: ignore[arg-type]
            (*dims * 2,),
        ),
    )
    return partitioned(hyper, flags, *leaves)  # type: ignore[no-any-return]


def _native(
    hyper: jax.Array,
    flags: jax.Array,
    *leaves: jax.Array,
    call: Callable[..., tuple[jax.Array, ...]],
    **attrs: bool,
) -> list[jax.Array]:
    """The kernel over ``n`` leaves (n params, n grads, n buffers), in ``call``s (:func:`_call`
    or :func:`_per_shard`) of at most ``_LEAVES_PER_CALL`` leaves: the new parameters
    (``apply``, written over them) or the updates, then the new buffers (written over
    them). ``flags`` (bool, one per leaf) tells which buffers have started; every call
    takes the whole array and its offset in it (a slice per call cost XLA 0.6 s to compile
    on 2000 leaves)."""
    n = len(leaves) // 3
    outs: list[jax.Array] = []
    new_buffers: list[jax.Array] = []
    for start in range(0, n, _LEAVES_PER_CALL):
        stop = min(start + _LEAVES_PER_CALL, n)
        part = [leaves[k * n + i] for k in range(3) for i in range(start, stop)]
        out = call(hyper, flags, *part, offset=np.int64(start), **attrs)
        outs += out[: stop - start]
        new_buffers += out[stop - start :]
    return [*outs, *new_buffers]


def _reference(
    hyper: jax.Array,
    flags: jax.Array,
    *leaves: jax.Array,
    apply: bool,
    build: Callable[[jax.Array], GradientTransformation],
    **_: Any,
) -> list[jax.Array]:
    """:func:`_native` in pure JAX: the reference chain ``build(hyper)`` on the same
    operands. Its derivatives are the native path's."""
    n = len(leaves) // 3
    params, grads, buffers = (list(leaves[k * n : (k + 1) * n]) for k in range(3))
    tx = build(hyper)
    state = tuple(
        TraceState(buffers, flags) if isinstance(s, TraceState) else s for s in tx.init(params)
    )
    updates, state = tx.update(grads, state, params)
    trace = next(s for s in state if isinstance(s, TraceState))
    return [*(apply_updates(params, updates) if apply else updates), *trace.momentum_buffer]


# One update over the leaves, chosen where JAX chooses a platform, at lowering: the kernel
# on CPU, the reference elsewhere (traced only when lowered for another platform).
_sgd_step_p = jax.extend.core.Primitive("sgdx_sgd_step")
_sgd_step_p.multiple_results = True


@functools.partial(jax.jit, static_argnames=("apply", "nesterov", "maximize", "build"))
def _eager(
    *operands: jax.Array, apply: bool, nesterov: bool, maximize: bool, build: Any
) -> list[jax.Array]:
    """The update called outside ``jax.jit`` (``sgdx.step`` as torch's ``optimizer.step()``):
    compiled once per configuration, as JAX's own primitives are."""
    return _sgd_step_p.bind(  # type: ignore[no-any-return]
        *operands, apply=apply, nesterov=nesterov, maximize=maximize, build=build
    )


_sgd_step_p.def_impl(_eager)


@_sgd_step_p.def_abstract_eval
def _abstract_eval(hyper: Any, flags: Any, *leaves: Any, apply: bool, **_: Any) -> list[Any]:
    n = len(leaves) // 3  # typed as what they overwrite: the params or the grads, the buffers
    return [*(leaves[:n] if apply else leaves[n : 2 * n]), *leaves[2 * n :]]


def _lower_reference(ctx: Any, *operands: Any, **params: Any) -> Any:
    """On other platforms: the reference."""
    return mlir.lower_fun(functools.partial(_reference, **params), multiple_results=True)(
        ctx, *operands
    )


def _lower_kernel(ctx: Any, *operands: Any, **params: Any) -> Any:
    """On CPU: the kernel; on each device's shards where the computation spans several
    devices (inside ``shard_map``, a device's shards are its operands)."""
    axis_context = ctx.module_context.axis_context
    call: Callable[..., tuple[jax.Array, ...]] = _per_shard
    if getattr(axis_context, "num_devices", None) == 1:
        call = _call
    elif getattr(axis_context, "device_assignment", ()) is None:
        return _lower_reference(ctx, *operands, **params)  # no devices to partition over
    attrs = {k: v for k, v in params.items() if k != "build"}
    return mlir.lower_fun(functools.partial(_native, call=call, **attrs), multiple_results=True)(
        ctx, *operands
    )


mlir.register_lowering(_sgd_step_p, _lower_kernel, platform="cpu")
mlir.register_lowering(_sgd_step_p, _lower_reference)
# custom_partitioning needs the computation's devices when it is lowered, which JAX gives
# the primitives that ask for them (as its own cuDNN kernels do)
with contextlib.suppress(ImportError, AttributeError):
    from jax._src import dispatch

    dispatch.prim_requires_devices_during_lowering.add(_sgd_step_p)


def _batch(operands: Any, dims: Any, **params: Any) -> tuple[list[jax.Array], list[int]]:
    """Under ``jax.vmap``: one update per batch element."""
    mapped = [d is not None for d in dims]  # None: not batched
    batched = [jnp.moveaxis(x, d, 0) for x, d, m in zip(operands, dims, mapped, strict=True) if m]

    def one(xs: list[jax.Array]) -> list[jax.Array]:
        it = iter(xs)
        return _sgd_step_p.bind(  # type: ignore[no-any-return]
            *(next(it) if m else x for x, m in zip(operands, mapped, strict=True)), **params
        )

    outs = jax.lax.map(one, batched)
    return outs, [0] * len(outs)


batching.primitive_batchers[_sgd_step_p] = _batch


def _differentiable(
    apply: bool, nesterov: bool, maximize: bool, build: Callable[[jax.Array], Any]
) -> Any:
    """The update over the leaves, differentiated (``jax.grad``, ``jax.jvp``, ...) through
    :func:`_reference`, since the kernel has no derivative of its own: every operand,
    ``hyper`` included, is an argument, so derivatives reach the hyperparameters."""
    attrs: dict[str, Any] = dict(apply=apply, nesterov=nesterov, maximize=maximize, build=build)
    step = jax.custom_jvp(lambda *operands: _sgd_step_p.bind(*operands, **attrs))
    reference = functools.partial(_reference, **attrs)
    step.defjvp(lambda primals, tangents: jax.jvp(reference, primals, tangents))
    return step


def with_kernel(
    reference: GradientTransformation,
    build: Callable[[jax.Array], GradientTransformation],
    learning_rate: ScalarOrSchedule,
    hyperparameters: tuple[Any, Any, Any],
    *,
    nesterov: bool,
    maximize: bool,
    in_update: bool,
) -> GradientTransformation:
    """``reference`` (sgd's chain: weight decay, trace, learning rate) with an in-place step
    for :func:`step` and, with ``in_update``, an ``update`` that runs the kernel where it
    can. ``build(hyper)`` is the same chain with the hyperparameters ``[lr, momentum,
    dampening, weight_decay]``."""
    momentum, dampening, weight_decay = hyperparameters
    scalar = _hyperparams.check_learning_rate(learning_rate)
    kernels = {apply: _differentiable(apply, nesterov, maximize, build) for apply in (False, True)}

    @functools.cache
    def kinds() -> list[type]:
        """The types of the reference's state, in order."""
        return [type(s) for s in jax.eval_shape(reference.init, {})]

    def native_pass(
        grads: Updates, state: OptState, params: Params | None, apply: bool
    ) -> tuple[Any, OptState] | None:
        """The kernel's (outputs tree, state), or ``None`` where the reference must run."""
        if (
            params is None
            or not isinstance(state, tuple)
            # a state of another configuration: the reference path says which (the trees
            # in it are checked against the gradients' below)
            or [type(s) for s in state] != kinds()
        ):
            return None
        trace_at = kinds().index(TraceState)
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
            return None  # the reference names the mismatched path
        p_leaves, b_leaves = (leaves for leaves, _ in flat)
        flag_at = _tree.positions(trace.momentum_buffer)
        live = [i for i, g in enumerate(g_leaves) if g is not None]
        operands = [(p_leaves[i], g_leaves[i], b_leaves[i]) for i in live]
        dtypes = {
            np.dtype(x.dtype)
            for x in itertools.chain(*operands)
            if isinstance(x, jax.Array | np.ndarray)
        }
        if (
            not live
            or any(
                not all(isinstance(x, jax.Array | np.ndarray) for x in (p, g, b))
                or not jnp.shape(p) == jnp.shape(g) == jnp.shape(b)
                for p, g, b in operands
            )
            or jnp.shape(trace.initialized) != (sum(k is not None for k in flag_at),)
            or len(dtypes) != 1
            or not dtypes <= TARGETS.keys()
        ):
            return None
        status = native_status()
        if not status.available:
            _warn_fallback(status.reason)
            return None
        lr = _hyperparams.learning_rate_at(learning_rate, scalar, scale.count)
        dtype = dtypes.pop()
        hyper = jnp.stack([jnp.asarray(v, dtype) for v in (lr, momentum, dampening, weight_decay)])
        at = np.array([flag_at[i] for i in live])
        flags = trace.initialized
        if not np.array_equal(at, np.arange(len(flags))):
            flags = flags[at]  # the flags of the leaves with a gradient
        results = kernels[apply](
            hyper,
            flags,
            *(leaves[i] for leaves in (p_leaves, g_leaves, b_leaves) for i in live),
        )
        outs, new_b = results[: len(live)], results[len(live) :]
        out_leaves = list(p_leaves) if apply else [None] * len(g_leaves)
        for i, out, b in zip(live, outs, new_b, strict=True):
            out_leaves[i], b_leaves[i] = out, b
        started = np.zeros(trace.initialized.shape, np.bool_)
        started[at] = True
        new_state = list(state)
        new_state[trace_at] = TraceState(
            jax.tree.unflatten(treedef, b_leaves),
            trace.initialized | (jnp.asarray(started) & (momentum != 0)),
        )
        new_state[-1] = ScaleByLearningRateState(count=_tree.safe_increment(scale.count))
        return jax.tree.unflatten(treedef, out_leaves), tuple(new_state)

    def update_fn(
        updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]:
        result = native_pass(updates, state, params, apply=False)
        if result is None:
            return reference.update(updates, state, params, **extra_args)
        return result

    def step_fn(params: Params, grads: Updates, state: OptState) -> tuple[Params, OptState]:
        result = native_pass(grads, state, params, apply=True)
        if result is None:
            updates, state = reference.update(grads, state, params)
            return apply_updates(params, updates), state
        return result

    tx = GradientTransformation(reference.init, update_fn if in_update else reference.update)
    _IN_PLACE[tx.update] = step_fn
    return tx


def step(
    tx: GradientTransformation, params: Params, grads: Updates, state: OptState
) -> tuple[Params, OptState]:
    """torch's ``optimizer.step()``: the updated parameters and state, for any transform.

    For :func:`sgdx.sgd` with its native kernel (on CPU), one in-place pass over parameters
    and momentum buffers: 20 bytes of memory traffic per float32 parameter, written over
    the inputs when the caller donates them (``jax.jit(..., donate_argnums=(1, 3))``).
    Otherwise ``tx.update`` then :func:`sgdx.apply_updates`, the same numbers.

    Args:
      tx: the transformation.
      params: the parameters.
      grads: their gradients (``None`` leaves: no gradient in this step).
      state: ``tx``'s state.

    Returns:
      ``(params, state)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import sgdx
      >>> tx = sgdx.sgd(0.5, momentum=0.5)
      >>> params = {"w": jnp.ones(3, jnp.float32)}
      >>> state = tx.init(params)
      >>> train_step = jax.jit(sgdx.step, static_argnums=0, donate_argnums=(1, 3))
      >>> params, state = train_step(tx, params, {"w": jnp.ones(3, jnp.float32)}, state)
      >>> print(params["w"])
      [0.5 0.5 0.5]
    """
    in_place = _IN_PLACE.get(tx.update)
    if in_place is not None:
        return in_place(params, grads, state)  # type: ignore[no-any-return]
    updates, state = tx.update(grads, state, params)
    return apply_updates(params, updates), state
