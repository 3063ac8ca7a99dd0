"""sgdx in an Equinox loop: non-array leaves get None gradients and are left alone.

pip install -e . equinox && python examples/equinox_training.py
"""

import equinox as eqx
import jax
import jax.numpy as jnp

import sgdx

x = jax.random.normal(jax.random.key(0), (128, 8))
y = jnp.sin(x.sum(axis=1, keepdims=True))
model = eqx.nn.MLP(8, 1, width_size=16, depth=1, activation=jnp.tanh, key=jax.random.key(1))
tx = sgdx.sgd(0.1, momentum=0.9, nesterov=True)
state = tx.init(eqx.filter(model, eqx.is_array))  # activation functions etc. become None


@eqx.filter_jit
def step(model, state, x, y):
    loss, grads = eqx.filter_value_and_grad(lambda m: jnp.mean((jax.vmap(m)(x) - y) ** 2))(model)
    updates, state = tx.update(grads, state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), state, loss


for _ in range(200):
    model, state, loss = step(model, state, x, y)
print("loss", float(loss))
