"""Where the standard ``update`` + ``apply_updates`` loses to the in-place step on CPU.

Two measurements, each variant its own jit with donation, interleaved, medians:

1. A jitted training step over ResNet-50's shapes whose gradients are computed in the step
   (``g = p * c`` for every leaf, as ``jax.grad``'s are): ``update`` + ``apply_updates``
   (XLA's update) against ``sgdx.step``.
2. The cost of a fresh array: a jitted ``g * 1.0`` into a new 25.6M-element float32 array,
   against an in-place ``p + u`` (``p`` donated) over the same elements, which moves more
   bytes.

``python benchmarks/update_in_train_step.py [--rounds 12]``
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from sgd_step import resnet50_shapes  # beside this file

import sgdx


def full(shape: tuple[int, ...], value: float) -> jax.Array:
    return jax.device_put(np.full(shape, value, np.float32)).block_until_ready()


def train_steps() -> dict:
    """name -> run(): one training step (the state is kept between calls)."""
    shapes = resnet50_shapes()
    runs = {}
    for name, in_place in (("update + apply_updates", False), ("sgdx.step", True)):
        tx = sgdx.sgd(0.1, 0.9, weight_decay=1e-4, nesterov=True)

        def train(p, s, c, tx=tx, in_place=in_place):
            g = jax.tree.map(lambda x: x * c, p)  # a gradient computed in the step
            if in_place:
                return sgdx.step(tx, p, g, s)
            u, s = tx.update(g, s, p)
            return sgdx.apply_updates(p, u), s

        params = [full(s, 0.1) for s in shapes]
        holder = {"p": params, "s": tx.init(params)}
        c = jnp.float32(0.01)
        step = jax.jit(train, donate_argnums=(0, 1)).lower(holder["p"], holder["s"], c).compile()

        def run(holder=holder, step=step, c=c):
            holder["p"], holder["s"] = step(holder["p"], holder["s"], c)
            jax.block_until_ready(holder["p"])

        runs[name] = run
    return runs


def fresh_array() -> dict:
    n = 25_600_000
    g, u = full((n,), 0.01), full((n,), 0.01)
    holder = {"p": full((n,), 0.1)}
    scale = jax.jit(lambda g: g * 1.0)
    add = jax.jit(lambda p, u: p + u, donate_argnums=0)

    def fresh():
        jax.block_until_ready(scale(g))

    def in_place():
        holder["p"] = add(holder["p"], u)
        jax.block_until_ready(holder["p"])

    return {"g * 1.0 into a fresh array (8 B/elem)": fresh, "p + u in place (12 B/elem)": in_place}


def measure(runs: dict, rounds: int) -> None:
    for run in runs.values():
        run()  # compile, warm up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            run()  # untimed: each sample follows a run of the same variant
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    for name, samples in times.items():
        print(f"  {name:40s} {np.median(samples) * 1e3:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    rounds = parser.parse_args().rounds
    print("training step, ResNet-50 shapes, gradients computed in the step:")
    measure(train_steps(), rounds)
    print("25.6M float32 elements:")
    measure(fresh_array(), rounds)


if __name__ == "__main__":
    main()
