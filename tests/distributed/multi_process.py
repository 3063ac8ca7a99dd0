"""One of two processes of a data-parallel sgdx run over JAX's distributed runtime.

``python -m tests.distributed.multi_process PROCESS_ID PORT OUT.npz``, started twice (ids 0
and 1) with XLA_FLAGS=--xla_force_host_platform_device_count=2: the processes meet at a
coordinator on 127.0.0.1:PORT, build one 4-device mesh across both, train with the batch
split over all devices (CPU collectives through gloo), and write their final parameters.
"""

from __future__ import annotations

import inspect
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def global_array(value, sharding):
    """This process provides only the shards its own devices hold."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def main(process_id: int, port: int, out: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # before anything touches a device: the problem module builds arrays when imported
    timeouts = {"heartbeat_timeout_seconds": 10, "shutdown_timeout_seconds": 10}
    known = inspect.signature(jax.distributed.initialize).parameters  # older jax: fewer
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=process_id,
        initialization_timeout=60,
        **{name: value for name, value in timeouts.items() if name in known},
    )

    from tests.distributed.problem import PARAMS, STEPS, X, Y, apply, loss_fn, tx

    assert jax.device_count() == 4 and jax.local_device_count() == 2
    mesh = jax.make_mesh((4,), ("data",))
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    params = jax.tree.map(lambda a: global_array(a, replicated), PARAMS)
    state = tx.init(params)  # eager: buffers made shard by shard, placed like params
    x, y = global_array(X, batch), global_array(Y, batch)
    step = jax.jit(
        lambda p, s, x, y: apply(p, s, jax.grad(loss_fn)(p, x, y)),
        in_shardings=(replicated, replicated, batch, batch),
        out_shardings=(replicated, replicated),
    )
    for _ in range(STEPS):
        params, state = step(params, state, x, y)
        jax.block_until_ready(params)
    local = {k: np.asarray(v.addressable_shards[0].data) for k, v in params.items()}
    np.savez(out, **local)
    print(f"process {process_id}: done")
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
