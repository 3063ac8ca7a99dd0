"""sgdx under multi-device data parallelism (8 host devices) and across two processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import processes


def test_data_parallel_modes_match_the_single_device_run():
    found = processes.report(["-m", "tests.distributed.data_parallel"], processes.environment(8))
    for mode in ("named_sharding", "shard_map", "pmap", "zero1", "fused_sharded"):
        assert found[mode] < 1e-13, (mode, found[mode])
    assert found["pmap_replica_spread"] == 0.0
    # the pitfall: pmean of per-device gradients of replicated params is 8x the gradient
    assert abs(found["naive_gradient_ratio"] - 8.0) < 1e-9
    assert found["shard_map_naive"] > 1e-2
    assert found["zero1_layout"] == {
        "buffer_shard_rows": [2],
        "buffer_rows": 16,
        "params_replicated": True,
    }
    assert found["eager_init_layout"] == {"same_sharding": True, "zeros": True}
    assert found["fused_sharded_layout"] is True


@pytest.mark.parametrize("partitioner", ["shardy", "gspmd"])
def test_native_kernel_runs_per_shard_in_every_layout(partitioner):
    """``sgdx.step`` on 8 devices calls the kernel on each device's shards (row-sharded,
    replicated, ZeRO-1, inside shard_map, on one of the 8), with no collective but ZeRO-1's
    gather of the parameters, the shardings kept, and the pure-JAX path's numbers."""
    env = processes.environment(8)
    env["JAX_USE_SHARDY_PARTITIONER"] = str(partitioner == "shardy").lower()
    output = processes.run(["-m", "tests.distributed.kernel_per_shard"], env)
    status, *meshes = (json.loads(line) for line in output.strip().splitlines())
    if not status["status"]:
        pytest.skip("the native kernel is not available")
    layouts = {
        (axes, name): r for mesh in meshes for axes, v in mesh.items() for name, r in v.items()
    }
    assert len(layouts) == 11
    for (axes, name), report in layouts.items():
        assert report["diff"] == 0.0, (axes, name, report)
        assert report["kernel"] and report["shardings_kept"], (axes, name, report)
        local = name in ("one_device", "replicated")
        assert report["w_shape_in_kernel"] == ["16,32" if local else "2,32"], (axes, name)
        assert report["collectives"] == (["all-gather"] if name == "zero1" else []), (axes, name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_identically_and_match_one_process(tmp_path):
    from tests.distributed.problem import reference

    port = free_port()
    outs = [tmp_path / f"process{i}.npz" for i in range(2)]
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.distributed.multi_process",
                str(i),
                str(port),
                str(outs[i]),
            ],
            cwd=processes.ROOT,
            env=processes.environment(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for process in workers:
            _, stderr = process.communicate(timeout=180)
            logs.append(stderr[-2000:])
    finally:
        for process in workers:
            process.kill()
    assert [p.returncode for p in workers] == [0, 0], logs
    first, second = (dict(np.load(out)) for out in outs)
    expected = reference()
    for name, value in first.items():
        np.testing.assert_array_equal(value, second[name])
        np.testing.assert_allclose(value, expected[name], rtol=1e-12, atol=1e-14)
