"""Save sgdx state with orbax mid-run, restore it, continue: the same trajectory.

pip install -e . orbax-checkpoint && python examples/orbax_checkpoint.py
"""

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import sgdx

x = jax.random.normal(jax.random.key(0), (64, 4))
y = x @ jnp.arange(1.0, 5.0)
grad = jax.jit(jax.grad(lambda p: jnp.mean((x @ p["w"] - y) ** 2)))
tx = sgdx.sgd(sgdx.schedules.step_lr(0.05, step_size=5, gamma=0.5), momentum=0.9)


def train(params, state, steps):
    for _ in range(steps):
        updates, state = tx.update(grad(params), state, params)
        params = sgdx.apply_updates(params, updates)
    return params, state


params = {"w": jnp.zeros(4)}
uninterrupted, _ = train(params, tx.init(params), 20)

params, state = train(params, tx.init(params), 8)
path = tempfile.mkdtemp() + "/step8"
checkpointer = ocp.StandardCheckpointer()
checkpointer.save(path, {"params": params, "opt_state": state})
checkpointer.wait_until_finished()

template = {"params": params, "opt_state": tx.init(params)}  # structure, shapes, dtypes
restored = checkpointer.restore(path, template)
resumed, _ = train(restored["params"], restored["opt_state"], 12)
print("identical to the uninterrupted run:", np.array_equal(resumed["w"], uninterrupted["w"]))
