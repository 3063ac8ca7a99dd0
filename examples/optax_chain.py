"""sgdx inside optax, and optax inside sgdx: clipping, accumulation, a NaN guard.

pip install -e . optax && python examples/optax_chain.py
"""

import jax
import jax.numpy as jnp
import optax

import sgdx

x = jax.random.normal(jax.random.key(0), (64, 4))
y = x @ jnp.arange(1.0, 5.0)
loss = lambda p, x, y: jnp.mean((x @ p["w"] - y) ** 2)  # noqa: E731
params = {"w": jnp.zeros(4)}

tx = optax.chain(
    optax.clip_by_global_norm(1.0),  # torch.nn.utils.clip_grad_norm_ (without its 1e-6)
    sgdx.sgd(0.05, momentum=0.9, nesterov=True),  # torch.optim.SGD
)
tx = optax.apply_if_finite(tx, max_consecutive_errors=5)  # skip steps with NaN/inf grads
tx = optax.MultiSteps(tx, every_k_schedule=4)  # 4 micro-batches per update
state = tx.init(params)


@jax.jit
def step(params, state, x, y):
    value, grads = jax.value_and_grad(loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, value


for _ in range(30):
    for micro in range(4):
        params, state, value = step(
            params, state, x[16 * micro : 16 * micro + 16], y[16 * micro : 16 * micro + 16]
        )
print("w =", params["w"], "loss", float(loss(params, x, y)))
