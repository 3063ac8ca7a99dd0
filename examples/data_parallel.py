"""Data parallelism on 8 (simulated) devices with sharded arrays, and ZeRO-1 state.

python examples/data_parallel.py   # sets XLA_FLAGS itself to fake 8 CPU devices
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import sgdx

mesh = jax.make_mesh((jax.device_count(),), ("data",))
replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
x = jax.device_put(jax.random.normal(jax.random.key(0), (256, 16)), batch)
y = jax.device_put(jnp.sin(x.sum(axis=1)), batch)
params = jax.device_put({"w": jnp.zeros((16, 64)), "v": jnp.full((64,), 0.1)}, replicated)


def loss(p, x, y):
    return jnp.mean((jnp.tanh(x @ p["w"]) @ p["v"] + x.sum(axis=1) * 0.1 - y) ** 2)


tx = sgdx.sgd(0.1, momentum=0.9, nesterov=True)
# ZeRO-1: every device keeps 1/8 of the momentum buffers; parameters stay replicated
state_sharding = sgdx.sharding.zero1_state_sharding(jax.eval_shape(tx.init, params), mesh)
state = jax.jit(tx.init, out_shardings=state_sharding)(params)


@jax.jit
def step(params, state, x, y):
    grads = jax.grad(loss)(params, x, y)  # XLA all-reduces over the batch axis
    updates, state = tx.update(grads, state, params)
    return sgdx.apply_updates(params, updates), state


step = jax.jit(
    step.__wrapped__,
    in_shardings=(replicated, state_sharding, batch, batch),
    out_shardings=(replicated, state_sharding),
    donate_argnums=(0, 1),
)
for _ in range(100):
    params, state = step(params, state, x, y)
    # Simulated CPU devices share the host's few threads: many steps in flight at once can
    # starve an all-reduce. On real accelerators drop this and let dispatch run ahead.
    jax.block_until_ready(params)
buffer = sgdx.momentum_buffers(state)["w"]
print("loss", float(loss(params, x, y)))
print("buffer shard on each device:", buffer.addressable_shards[0].data.shape, "of", buffer.shape)
