"""Many small leaves: the same model as 400 leaves, as one flat array, and as stacked layers.

pip install -e . && python examples/many_leaves.py

Every array that crosses a ``jax.jit`` boundary costs a few microseconds of dispatch, and
XLA compiles code per leaf, so a model of hundreds of small layers spends more time around
its optimizer step than in it. Two layouts keep the leaf count small; the numbers are the
pytree run's in both, only the layout changes:

- flat: ``jax.flatten_util.ravel_pytree`` keeps the parameters as one array; the loss
  unravels it (slices, inside the jitted step), ``jax.grad`` returns one flat gradient and
  the optimizer state is one buffer. The step is fast; XLA compiles each slice separately.
- stacked: repeated layers stacked on a leading axis, the forward pass a ``lax.scan`` over
  it: two leaves, one compiled layer body.
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


def layer(x, w, b):
    return x + jnp.tanh(x @ w + b)


def loss(params, x, y):
    for p in params:  # a deep residual MLP
        x = layer(x, p["w"], p["b"])
    return jnp.mean((x - y) ** 2)


def stacked_loss(stacked, x, y):
    x, _ = jax.lax.scan(lambda x, p: (layer(x, p["w"], p["b"]), None), x, stacked)
    return jnp.mean((x - y) ** 2)


opt = sgdx.sgd(0.002, momentum=0.9, nesterov=True, weight_decay=1e-4)


def make_step(loss_fn):
    def step(params, state, x, y):
        value, grads = jax.value_and_grad(loss_fn)(params, x, y)
        params, state = sgdx.step(opt, params, grads, state)
        return params, state, value

    return step


flat, unravel = ravel_pytree(params)  # one float32 array, and the way back to the tree
stacked = jax.tree.map(lambda *layers: jnp.stack(layers), *params)  # {"w": (200, 16, 16), ...}


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


runs = {
    "pytree": train(make_step(loss), params),
    "flat": train(make_step(lambda f, x, y: loss(unravel(f), x, y)), flat),
    "stacked": train(make_step(stacked_loss), stacked),
}
print(f"{DEPTH} layers, {flat.size} parameters, {STEPS} steps")
print(f"{'layout':<8}{'leaves':>7}{'compile s':>10}{'step ms':>8}  loss")
for name, (trained, losses, compile_s, step_s) in runs.items():
    leaves = len(jax.tree.leaves(trained))
    print(
        f"{name:<8}{leaves:>7}{compile_s:>10.2f}{1e3 * step_s:>8.2f}"
        f"  {losses[0]:.6f} -> {losses[-1]:.6f}"
    )
reference = runs["pytree"][0]
layouts = {"flat": unravel(runs["flat"][0])}
layouts["stacked"] = [jax.tree.map(lambda a, i=i: a[i], runs["stacked"][0]) for i in range(DEPTH)]
for name, trained in layouts.items():
    diff = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), reference, trained)
    print(f"max |pytree - {name}| over all parameters: {max(jax.tree.leaves(diff)):.3g}")
