"""The native kernel as a JAX primitive: one in-place pass over parameters, gradients and
buffers, with its lowering (the kernel on CPU, on each device's shards; a reference in pure
JAX elsewhere), batching and derivative rules. What it computes is the caller's: the
primitive knows the kernel's operands, not the optimizer."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import SdyShardingRule, custom_partitioning
from jax.interpreters import batching, mlir

from sgdx._kernel import TARGETS, native_status

Reference = Callable[..., list[jax.Array]]
"""``reference(hyper, flags, *leaves, nesterov=..., maximize=...)``: the kernel's results
in pure JAX. A module-level function, so that it is one static parameter."""

# XLA's compile time grows faster than linearly with the number of aliased operands of one
# custom call (500 leaves in one call: 10 s; in calls of 32: under 1 s), so a tree is
# updated in calls over at most this many leaves each.
_LEAVES_PER_CALL = 32


def _call(hyper: jax.Array, flags: jax.Array, *leaves: jax.Array, **attrs: Any) -> Any:
    """One kernel call over ``n`` leaves, whose flags are ``flags[offset:offset + n]``
    (``attrs``: ``offset``, ``nesterov``, ``maximize``). ``leaves`` is n params, n grads, n
    buffers; the results are the n new params and n new buffers, written over them."""
    n = len(leaves) // 3
    aliases = {2 + i: i for i in range(n)} | {2 + 2 * n + i: n + i for i in range(n)}
    # results typed as the operands they overwrite (inside shard_map: varying as they)
    call = jax.ffi.ffi_call(
        TARGETS[np.dtype(hyper.dtype)],
        tuple(jax.typeof(x) for x in (*leaves[:n], *leaves[2 * n :])),
        input_output_aliases=aliases,
    )
    return call(hyper, flags, *leaves, **attrs)


def _per_shard(hyper: jax.Array, flags: jax.Array, *leaves: jax.Array, **attrs: Any) -> Any:
    """:func:`_call` on each device's shards. The update is elementwise, so each leaf is
    computed in its buffer's sharding (parameters and gradients are resharded to it where
    they differ, as a ZeRO-1 layout's replicated parameters are sliced), and the results
    keep it. Inside ``shard_map`` it is :func:`_call` itself."""
    n = len(leaves) // 3

    def call(*operands: jax.Array) -> Any:  # positional only, as it must
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
    return partitioned(hyper, flags, *leaves)


def _native(
    hyper: jax.Array, flags: jax.Array, *leaves: jax.Array, call: Callable[..., Any], **attrs: bool
) -> list[jax.Array]:
    """The kernel over ``n`` leaves (n params, n grads, n buffers), in ``call``s (:func:`_call`
    or :func:`_per_shard`) of at most ``_LEAVES_PER_CALL`` leaves: the new parameters, then
    the new buffers, written over them. ``flags`` (bool, one per leaf) tells which buffers
    have started; every call takes the whole array and its offset in it (a slice per call
    cost XLA 0.6 s to compile on 2000 leaves)."""
    n = len(leaves) // 3
    new_params: list[jax.Array] = []
    new_buffers: list[jax.Array] = []
    for start in range(0, n, _LEAVES_PER_CALL):
        stop = min(start + _LEAVES_PER_CALL, n)
        part = [leaves[k * n + i] for k in range(3) for i in range(start, stop)]
        out = call(hyper, flags, *part, offset=np.int64(start), **attrs)
        new_params += out[: stop - start]
        new_buffers += out[stop - start :]
    return [*new_params, *new_buffers]


_step_p = jax.extend.core.Primitive("sgdx_sgd_step")
_step_p.multiple_results = True


@functools.partial(jax.jit, static_argnames=("nesterov", "maximize", "reference"))
def _eager(
    *operands: jax.Array, nesterov: bool, maximize: bool, reference: Reference
) -> list[jax.Array]:
    """The pass called outside ``jax.jit`` (``sgdx.step`` as torch's ``optimizer.step()``):
    compiled once per configuration, as JAX's own primitives are."""
    return _step_p.bind(  # type: ignore[no-any-return]
        *operands, nesterov=nesterov, maximize=maximize, reference=reference
    )


_step_p.def_impl(_eager)


@_step_p.def_abstract_eval
def _abstract_eval(hyper: Any, flags: Any, *leaves: Any, **_: Any) -> list[Any]:
    n = len(leaves) // 3  # typed as what they overwrite: the params, the buffers
    return [*leaves[:n], *leaves[2 * n :]]


def _lower_reference(ctx: Any, *operands: Any, reference: Reference, **attrs: Any) -> Any:
    """On other platforms: the reference."""
    return mlir.lower_fun(functools.partial(reference, **attrs), multiple_results=True)(
        ctx, *operands
    )


def _lower_kernel(ctx: Any, *operands: Any, reference: Reference, **attrs: Any) -> Any:
    """On CPU: the kernel; on each device's shards where the computation spans several
    devices (inside ``shard_map``, a device's shards are its operands)."""
    axis_context = ctx.module_context.axis_context
    call: Callable[..., Any] = _per_shard
    if getattr(axis_context, "num_devices", None) == 1:
        call = _call
    elif getattr(axis_context, "device_assignment", ()) is None:
        # no devices to partition over
        return _lower_reference(ctx, *operands, reference=reference, **attrs)
    return mlir.lower_fun(functools.partial(_native, call=call, **attrs), multiple_results=True)(
        ctx, *operands
    )


# The kernel's FFI targets are registered at import (loading the library; no backend is
# started), so that a step exported with them runs in any process that imports sgdx.
native_status()

mlir.register_lowering(_step_p, _lower_kernel, platform="cpu")
mlir.register_lowering(_step_p, _lower_reference)


def _require_devices_during_lowering() -> bool:
    """custom_partitioning needs the computation's devices when it is lowered, which JAX
    gives the primitives in a private registry (as to its own cuDNN kernels). Without it a
    step over several devices lowers to the reference; a warning says so."""
    try:
        from jax._src import dispatch

        dispatch.prim_requires_devices_during_lowering.add(_step_p)
    except (ImportError, AttributeError) as error:
        warnings.warn(
            f"sgdx: this jax ({jax.__version__}) has no "
            f"jax._src.dispatch.prim_requires_devices_during_lowering ({error}), so sgdx.step "
            "over several devices runs the pure-JAX path (the same numbers, slower); "
            "single-device steps keep the native kernel.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


DEVICES_DURING_LOWERING = _require_devices_during_lowering()


def _batch(operands: Any, dims: Any, **params: Any) -> tuple[list[jax.Array], list[int]]:
    """Under ``jax.vmap``: one pass per batch element."""
    mapped = [d is not None for d in dims]  # None: not batched
    batched = [jnp.moveaxis(x, d, 0) for x, d, m in zip(operands, dims, mapped, strict=True) if m]

    def one(xs: list[jax.Array]) -> list[jax.Array]:
        it = iter(xs)
        return _step_p.bind(  # type: ignore[no-any-return]
            *(next(it) if m else x for x, m in zip(operands, mapped, strict=True)), **params
        )

    outs = jax.lax.map(one, batched)
    return outs, [0] * len(outs)


batching.primitive_batchers[_step_p] = _batch


@functools.cache
def in_place(nesterov: bool, maximize: bool, reference: Reference) -> Callable[..., Any]:
    """The pass as a function of ``(hyper, flags, *params, *grads, *buffers)`` returning
    ``[*new_params, *new_buffers]``, differentiable (``jax.grad``, ``jax.jvp``, ...) through
    ``reference``, since the kernel has no derivative of its own: every operand, ``hyper``
    included, is an argument, so derivatives reach the hyperparameters."""
    attrs: dict[str, Any] = dict(nesterov=nesterov, maximize=maximize)
    step = jax.custom_jvp(lambda *operands: _step_p.bind(*operands, reference=reference, **attrs))
    exact = functools.partial(reference, **attrs)
    step.defjvp(lambda primals, tangents: jax.jvp(exact, primals, tangents))
    return step
