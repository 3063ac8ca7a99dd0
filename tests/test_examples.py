"""The scripts in examples/ run as a user runs them."""

from __future__ import annotations

import pytest

from tests import processes

EXAMPLES = processes.ROOT / "examples"


def test_resume_from_torch_round_trip_tracks_torch():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    output = processes.run([str(EXAMPLES / "resume_from_torch.py")])
    rows = [line.split() for line in output.splitlines() if line[:6].strip().isdigit()]
    assert [int(r[0]) for r in rows][:3] == [4, 8, 9] and int(rows[-1][0]) == 60
    for row in rows:
        losses = [float(v) for v in row[2:]]
        assert max(losses) - min(losses) < 1e-12, row
    for line in output.splitlines():
        if line.startswith("max |"):
            assert float(line.split(": ")[1]) < 1e-12, line


# Each script runs in a process of its own (as a user runs it; data_parallel.py sets the
# device count before JAX starts); what the test reads are the script's own results, its
# globals after the run, printed as JSON on the last line: not what the script prints.
GLOBALS = """
import json, runpy, sys
import jax, numpy as np
ns = runpy.run_path(sys.argv[1], run_name="__main__")
out = {}
for name in sys.argv[2:]:
    value = eval(name, ns)
    out[name] = [np.asarray(leaf).tolist() for leaf in jax.tree.leaves(value)]
print(json.dumps(out))
"""


def script_globals(script: str, *names: str) -> dict:
    """``names`` (expressions over the script's globals) after running ``script``, each as
    the list of its pytree leaves."""
    return processes.report(["-c", GLOBALS, str(EXAMPLES / script), *names])


def test_optax_chain_learns_the_weights():
    pytest.importorskip("optax")
    found = script_globals("optax_chain.py", "float(loss(params, x, y))", "float(jnp.mean(y**2))")
    # from the loss of w = 0 (y = x @ [1, 2, 3, 4]) to a hundredth of it
    assert found["float(loss(params, x, y))"][0] < found["float(jnp.mean(y**2))"][0] / 100


def test_flax_loops_learn():
    pytest.importorskip("flax")
    found = script_globals(
        "flax_training.py",
        "float(jnp.mean((state.apply_fn(state.params, x) - y) ** 2))",
        "float(jnp.mean((model(x) - y) ** 2))",
        "float(jnp.mean(y ** 2))",
    )
    start = found["float(jnp.mean(y ** 2))"][0]  # the loss of predicting zero
    assert found["float(jnp.mean((state.apply_fn(state.params, x) - y) ** 2))"][0] < start / 4
    assert found["float(jnp.mean((model(x) - y) ** 2))"][0] < start / 4


def test_equinox_loop_learns():
    pytest.importorskip("equinox")
    found = script_globals("equinox_training.py", "float(loss)", "float(jnp.mean(y ** 2))")
    assert found["float(loss)"][0] < found["float(jnp.mean(y ** 2))"][0] / 4


def test_orbax_resume_is_the_uninterrupted_run():
    pytest.importorskip("orbax.checkpoint")
    found = script_globals("orbax_checkpoint.py", "resumed", "uninterrupted")
    assert found["resumed"] == found["uninterrupted"]


def test_data_parallel_keeps_a_buffer_shard_per_device():
    found = script_globals(
        "data_parallel.py",
        "buffer.addressable_shards[0].data.shape",
        "buffer.shape",
        "len(buffer.addressable_shards)",
    )
    assert found["buffer.shape"] == [16, 64]
    assert found["len(buffer.addressable_shards)"] == [8]
    assert found["buffer.addressable_shards[0].data.shape"] == [2, 64]


def test_many_leaves_layouts_train_bitwise_alike():
    found = script_globals("many_leaves.py", "reference", "layouts['flat']", "layouts['stacked']")
    pytree, *others = found.values()
    assert all(other == pytree for other in others)
