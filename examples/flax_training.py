"""sgdx in Flax: `TrainState` (linen) and `nnx.Optimizer`.

pip install -e . flax && python examples/flax_training.py
"""

import jax
import jax.numpy as jnp
from flax import linen, nnx
from flax.training import train_state

import sgdx

x = jax.random.normal(jax.random.key(0), (128, 8))
y = jnp.sin(x.sum(axis=1, keepdims=True))
tx = sgdx.sgd(0.1, momentum=0.9, weight_decay=1e-4)

# linen + TrainState
mlp = linen.Sequential([linen.Dense(16), linen.tanh, linen.Dense(1)])
state = train_state.TrainState.create(
    apply_fn=mlp.apply, params=mlp.init(jax.random.key(1), x), tx=tx
)


@jax.jit
def train_step(state, x, y):
    grads = jax.grad(lambda p: jnp.mean((state.apply_fn(p, x) - y) ** 2))(state.params)
    return state.apply_gradients(grads=grads)


for _ in range(200):
    state = train_step(state, x, y)
print("linen loss", float(jnp.mean((state.apply_fn(state.params, x) - y) ** 2)))


# nnx + Optimizer
class MLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(8, 16, rngs=rngs)
        self.out = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


model = MLP(nnx.Rngs(1))
optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit
def nnx_step(model, optimizer, x, y):
    grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)


for _ in range(200):
    nnx_step(model, optimizer, x, y)
print("nnx loss", float(jnp.mean((model(x) - y) ** 2)))
