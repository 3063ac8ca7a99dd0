"""Data-parallel sgdx runs on 8 host devices, each compared with the single-device run.

Run from the repository root as ``python -m tests.distributed.data_parallel`` with
XLA_FLAGS=--xla_force_host_platform_device_count=8; prints a JSON object of the largest
parameter difference of each mode against the reference.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import sgdx
from tests.distributed.problem import PARAMS, STEPS, X, Y, apply, loss_fn, reference, tx


def max_diff(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in pairs)


def named_sharding(mesh):
    """jit with params replicated and the batch split across devices: XLA all-reduces."""
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    step = jax.jit(
        lambda p, s, x, y: apply(p, s, jax.grad(loss_fn)(p, x, y)),
        in_shardings=(replicated, replicated, batch, batch),
        out_shardings=(replicated, replicated),
    )
    params = jax.device_put(PARAMS, replicated)
    state = jax.jit(tx.init, out_shardings=replicated)(params)
    x, y = jax.device_put(X, batch), jax.device_put(Y, batch)
    for _ in range(STEPS):
        params, state = step(params, state, x, y)
        jax.block_until_ready(params)  # simulated devices: one step in flight
    assert params["w1"].sharding.is_fully_replicated
    return params


def shard_map_modes(mesh):
    """Differentiate the pmean-ed loss (right), and the naive grad-then-pmean (wrong)."""

    def right(p, s, x, y):
        grads = jax.grad(lambda p: jax.lax.pmean(loss_fn(p, x, y), "data"))(p)
        return apply(p, s, grads)

    def naive(p, s, x, y):
        grads = jax.lax.pmean(jax.grad(loss_fn)(p, x, y), "data")
        return apply(p, s, grads)

    batch = NamedSharding(mesh, P("data"))
    x, y = jax.device_put(X, batch), jax.device_put(Y, batch)
    results = {}
    for name, body in (("shard_map", right), ("shard_map_naive", naive)):
        step = jax.jit(
            jax.shard_map(
                body, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")), out_specs=(P(), P())
            )
        )
        params, state = PARAMS, tx.init(PARAMS)
        for _ in range(STEPS):
            params, state = step(params, state, x, y)
            jax.block_until_ready(params)  # simulated devices: one step in flight
        results[name] = params
    # the naive form's first gradient, against the true one
    grad = jax.grad(loss_fn)(PARAMS, X, Y)
    naive_grad = jax.jit(
        jax.shard_map(
            lambda p, x, y: jax.lax.pmean(jax.grad(loss_fn)(p, x, y), "data"),
            mesh=mesh,
            in_specs=(P(), P("data"), P("data")),
            out_specs=P(),
        )
    )(PARAMS, x, y)
    ratio = float(jnp.sum(naive_grad["w2"] * grad["w2"]) / jnp.sum(grad["w2"] ** 2))
    return results, ratio


def pmap_mode():
    n = jax.local_device_count()
    step = jax.pmap(
        lambda p, s, x, y: apply(p, s, jax.lax.pmean(jax.grad(loss_fn)(p, x, y), "data")),
        axis_name="data",
    )
    replicate = lambda tree: jax.tree.map(lambda a: jnp.stack([a] * n), tree)  # noqa: E731
    params, state = replicate(PARAMS), replicate(tx.init(PARAMS))
    x, y = X.reshape(n, -1, X.shape[1]), Y.reshape(n, -1, Y.shape[1])
    for _ in range(STEPS):
        params, state = step(params, state, x, y)
        jax.block_until_ready(params)  # simulated devices: one step in flight
    first = jax.tree.map(lambda a: a[0], params)
    spread = max(float(jnp.max(jnp.abs(a - a[0]))) for a in jax.tree.leaves(params))
    return first, spread


def zero1(mesh):
    """Momentum buffers sharded across devices, parameters replicated."""
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    state_sharding = sgdx.sharding.zero1_state_sharding(jax.eval_shape(tx.init, PARAMS), mesh)
    params = jax.device_put(jax.tree.map(jnp.copy, PARAMS), replicated)  # donated below
    state = jax.jit(tx.init, out_shardings=state_sharding)(params)
    step = jax.jit(
        lambda p, s, x, y: apply(p, s, jax.grad(loss_fn)(p, x, y)),
        in_shardings=(replicated, state_sharding, batch, batch),
        out_shardings=(replicated, state_sharding),
        donate_argnums=(0, 1),
    )
    x, y = jax.device_put(X, batch), jax.device_put(Y, batch)
    for _ in range(STEPS):
        params, state = step(params, state, x, y)
        jax.block_until_ready(params)  # simulated devices: one step in flight
    buffer = state.momentum.momentum_buffer["w1"]
    shard_rows = {s.data.shape[0] for s in buffer.addressable_shards}
    return params, {
        "buffer_shard_rows": sorted(shard_rows),
        "buffer_rows": buffer.shape[0],
        "params_replicated": bool(params["w1"].sharding.is_fully_replicated),
    }


def fused_sharded():
    """``sgdx.step`` with ``sgd``'s default (native on one device) on row-sharded
    parameters: the values of the reference run, and parameters and buffers still sharded
    as the parameters were."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = NamedSharding(mesh, P("data"))
    fused = sgdx.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    params = jax.device_put(PARAMS, rows)
    state = fused.init(params)
    step = jax.jit(lambda p, s, x, y: sgdx.step(fused, p, jax.grad(loss_fn)(p, x, y), s))
    for _ in range(STEPS):
        params, state = step(params, state, X, Y)
        jax.block_until_ready(params)  # simulated devices: one step in flight
    arrays = [*jax.tree.leaves(params), *jax.tree.leaves(state.momentum.momentum_buffer)]
    return params, all(a.sharding.is_equivalent_to(rows, a.ndim) for a in arrays)


def eager_init_layout(mesh):
    """Eager ``init`` of row-sharded parameters: zero buffers sharded as the parameters."""
    params = jax.device_put(PARAMS, NamedSharding(mesh, P("data")))
    buffers = tx.init(params).momentum.momentum_buffer
    pairs = list(zip(jax.tree.leaves(buffers), jax.tree.leaves(params), strict=True))
    return {
        "same_sharding": all(b.sharding == p.sharding for b, p in pairs),
        "zeros": all(not np.any(np.asarray(b)) for b, _ in pairs),
    }


if __name__ == "__main__":
    assert jax.device_count() == 8, os.environ.get("XLA_FLAGS")
    mesh = jax.make_mesh((8,), ("data",))
    expected = reference()
    shard_map_results, naive_ratio = shard_map_modes(mesh)
    pmapped, pmap_spread = pmap_mode()
    zero1_params, zero1_layout = zero1(mesh)
    init_layout = eager_init_layout(mesh)
    fused_params, fused_layout = fused_sharded()
    print(
        json.dumps(
            {
                "named_sharding": max_diff(named_sharding(mesh), expected),
                "shard_map": max_diff(shard_map_results["shard_map"], expected),
                "shard_map_naive": max_diff(shard_map_results["shard_map_naive"], expected),
                "naive_gradient_ratio": naive_ratio,
                "pmap": max_diff(pmapped, expected),
                "pmap_replica_spread": pmap_spread,
                "zero1": max_diff(zero1_params, expected),
                "zero1_layout": zero1_layout,
                "eager_init_layout": init_layout,
                "fused_sharded": max_diff(fused_params, expected),
                "fused_sharded_layout": fused_layout,
            }
        )
    )
