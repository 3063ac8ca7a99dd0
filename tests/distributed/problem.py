"""The data-parallel test problem: a small MLP regression, its sgdx optimizer and the
single-device reference run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import sgdx

jax.config.update("jax_enable_x64", True)
STEPS, BATCH = 5, 64
rng = np.random.default_rng(0)
X = rng.normal(size=(BATCH, 16))
Y = rng.normal(size=(BATCH, 8))
PARAMS = {
    "w1": jnp.asarray(rng.normal(size=(16, 32)) / 4),
    "b1": jnp.zeros(32),
    "w2": jnp.asarray(rng.normal(size=(32, 8)) / 6),
    "b2": jnp.zeros(8),
}
tx = sgdx.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)


def loss_fn(params, x, y):
    hidden = jnp.tanh(x @ params["w1"] + params["b1"][None])
    return jnp.mean((hidden @ params["w2"] + params["b2"][None] - y) ** 2)


def apply(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return sgdx.apply_updates(params, updates), state


def reference():
    params, state = PARAMS, tx.init(PARAMS)
    step = jax.jit(lambda p, s, x, y: apply(p, s, jax.grad(loss_fn)(p, x, y)))
    for _ in range(STEPS):
        params, state = step(params, state, X, Y)
    return params
