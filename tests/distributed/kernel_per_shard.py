"""``sgdx.step``'s native kernel on 8 host devices, in each layout a user may give it.

Run from the repository root as ``python -m tests.distributed.kernel_per_shard`` with
XLA_FLAGS=--xla_force_host_platform_device_count=8; prints a JSON object per layout: the
largest difference from the single-device pure-JAX run, whether the compiled step calls the
kernel, the shapes of the parameter ``w`` (16 x 32) that it sees, the collectives in the step, and
whether the results keep the layout's shardings.
"""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import sgdx

jax.config.update("jax_enable_x64", True)
STEPS = 3
rng = np.random.default_rng(0)
PARAMS = {"w": rng.normal(size=(16, 32)), "b": rng.normal(size=(8,))}
GRADS = [{k: rng.normal(size=v.shape) for k, v in PARAMS.items()} for _ in range(STEPS)]
kernel = sgdx.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
reference = sgdx.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, fused=False)
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def expected():
    params, state = PARAMS, reference.init(PARAMS)
    for grads in GRADS:
        updates, state = reference.update(grads, state, params)
        params = sgdx.apply_updates(params, updates)
    return params


def report(step, params, state, place_grads, want):
    """Run ``step`` on the layout; ``want(name)`` is each result's expected sharding."""
    grads = [place_grads(g) for g in GRADS]
    text = step.lower(params, grads[0], state).compile().as_text()
    calls = [line for line in text.splitlines() if 'custom_call_target="sgdx_sgd_step' in line]
    for g in grads:
        params, state = step(params, g, state)
    diff = max(float(np.max(np.abs(np.asarray(params[k]) - v))) for k, v in expected().items())
    buffers = state.momentum.momentum_buffer
    keep = all(
        params[k].sharding.is_equivalent_to(want("params", k), params[k].ndim)
        and buffers[k].sharding.is_equivalent_to(want("buffers", k), buffers[k].ndim)
        for k in PARAMS
    )
    return {
        "diff": diff,
        "kernel": bool(calls),
        "w_shape_in_kernel": sorted({s for c in calls for s in re.findall(r"f64\[(\d+,32)\]", c)}),
        "collectives": sorted({c for c in COLLECTIVES if c in text}),
        "shardings_kept": keep,
    }


def placed(tree, sharding):
    return jax.tree.map(lambda x: jax.device_put(jnp.asarray(x), sharding), tree)


def layouts(mesh):
    rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    step = jax.jit(lambda p, g, s: sgdx.step(kernel, p, g, s), donate_argnums=(0, 2))
    out = {}

    params = jax.tree.map(jnp.asarray, PARAMS)  # uncommitted, on the default device
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    out["one_device"] = report(
        step, params, kernel.init(params), lambda g: jax.tree.map(jnp.asarray, g),
        lambda *_: one,
    )  # fmt: skip
    for name, sharding in (("rows", rows), ("replicated", replicated)):
        params = placed(PARAMS, sharding)
        out[name] = report(
            step, params, kernel.init(params), lambda g, s=sharding: placed(g, s),
            lambda *_, s=sharding: s,
        )  # fmt: skip
    if mesh.axis_types[0] == jax.sharding.AxisType.Auto:  # Explicit: a sharding type error
        # params sharded by rows, gradients replicated (as a replicated loss gives them)
        params = placed(PARAMS, rows)
        out["rows_replicated_grads"] = report(
            step, params, kernel.init(params), lambda g: placed(g, replicated), lambda *_: rows
        )
    # ZeRO-1: params and gradients replicated, buffers split across the devices
    params = placed(PARAMS, replicated)
    state_sharding = sgdx.sharding.zero1_state_sharding(jax.eval_shape(kernel.init, params), mesh)
    zero1 = jax.jit(
        lambda p, g, s: sgdx.step(kernel, p, g, s), donate_argnums=(0, 2),
        out_shardings=(replicated, state_sharding),
    )  # fmt: skip
    out["zero1"] = report(
        zero1, params, jax.jit(kernel.init, out_shardings=state_sharding)(params),
        lambda g: placed(g, replicated),
        lambda kind, _: replicated if kind == "params" else rows,
    )  # fmt: skip
    # inside shard_map: each device steps its own rows (buffers too; flags and count whole)
    params = placed(PARAMS, rows)
    state = kernel.init(params)
    state_specs = jax.tree.map(lambda _: P(), state)
    state_specs = state_specs._replace(
        momentum=state_specs.momentum._replace(momentum_buffer={k: P("data") for k in PARAMS})
    )
    mapped = jax.jit(
        jax.shard_map(
            lambda p, g, s: sgdx.step(kernel, p, g, s), mesh=mesh,
            in_specs=(P("data"), P("data"), state_specs), out_specs=(P("data"), state_specs),
        ),
        donate_argnums=(0, 2),
    )  # fmt: skip
    out["shard_map"] = report(
        mapped, params, jax.tree.map(jax.device_put, state, jax.tree.map(
            lambda spec: NamedSharding(mesh, spec), state_specs)),
        lambda g: placed(g, rows), lambda *_: rows,
    )  # fmt: skip
    return out


if __name__ == "__main__":
    assert jax.device_count() == 8, os.environ.get("XLA_FLAGS")
    print(json.dumps({"status": sgdx.native_status().available}))
    for axes in ("Auto", "Explicit"):
        mesh = jax.make_mesh((8,), ("data",), axis_types=(getattr(jax.sharding.AxisType, axes),))
        print(json.dumps({axes: layouts(mesh)}))
