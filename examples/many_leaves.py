"""Many small leaves: keep the parameters in one flat array.

pip install -e . && python examples/many_leaves.py

Every array that crosses a ``jax.jit`` boundary costs a few microseconds of dispatch, and
XLA compiles per leaf, so a model of hundreds of small layers spends more time around its
optimizer step than in it. ``jax.flatten_util.ravel_pytree`` keeps the parameters as one
array: the loss unravels it (slices, inside the jitted step), ``jax.grad`` returns one flat
gradient, and the optimizer state is one buffer. The numbers are the same as the pytree
run's; only the layout changes.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import sgdx

DEPTH, WIDTH, STEPS = 200, 16, 30  # 400 leaves, 54,400 parameters
keys = jax.random.split(jax.random.key(0), DEPTH + 1)
params = [
    {"w": jax.random.normal(k, (WIDTH, WIDTH)) / (4 * WIDTH), "b": jnp.zeros(WIDTH)}
    for k in keys[1:]
]
x = jax.random.normal(keys[0], (32, WIDTH))
y = jnp.sin(x)


def loss(params, x, y):
    for layer in params:  # a deep residual MLP
        x = x + jnp.tanh(x @ layer["w"] + layer["b"])
    return jnp.mean((x - y) ** 2)


opt = sgdx.fused_sgd(0.002, momentum=0.9, nesterov=True, weight_decay=1e-4)


def tree_step(params, state, x, y):
    value, grads = jax.value_and_grad(loss)(params, x, y)
    params, state = opt.step(params, grads, state)
    return params, state, value


flat, unravel = ravel_pytree(params)  # one float32 array, and the way back to the tree


def flat_step(flat, state, x, y):
    value, grads = jax.value_and_grad(lambda f: loss(unravel(f), x, y))(flat)
    flat, state = opt.step(flat, grads, state)
    return flat, state, value


def train(step, p):
    state = opt.init(p)
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(p, state, x, y).compile()
    compile_s = time.perf_counter() - start
    times, losses = [], []
    for _ in range(STEPS):
        start = time.perf_counter()
        p, state, value = compiled(p, state, x, y)
        losses.append(float(value))  # waits for the step
        times.append(time.perf_counter() - start)
    return p, losses, compile_s, float(np.median(times[5:]))


tree_params, tree_losses, tree_compile, tree_ms = train(tree_step, params)
flat_params, flat_losses, flat_compile, flat_ms = train(flat_step, flat)
diff = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), tree_params, unravel(flat_params))
print(f"{2 * DEPTH} leaves, {flat.size} parameters, {STEPS} steps")
print(f"pytree: compile {tree_compile:.2f} s, step {1e3 * tree_ms:.2f} ms")
print(f"flat:   compile {flat_compile:.2f} s, step {1e3 * flat_ms:.2f} ms")
print(f"loss {tree_losses[0]:.6f} -> {tree_losses[-1]:.6f} (pytree), {flat_losses[-1]:.6f} (flat)")
print(f"max |pytree - flat| over all parameters: {max(jax.tree.leaves(diff)):.3g}")
