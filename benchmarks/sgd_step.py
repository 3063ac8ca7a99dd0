"""SGD step benchmark: sgdx against optax, torch and the memory-bandwidth roofline.

    python benchmarks/sgd_step.py [--models gpt2 resnet50 many_leaves] [--rounds 20]

Configuration: float32, momentum 0.9, nesterov, weight decay 1e-4, lr 0.1. Each model runs
in a process of its own; inside it every variant is warmed up, then the variants take turns
(one step each per round) so that they see the same machine state, and the table reports
the median (min-max) step time, effective bandwidth at 20 bytes per parameter (read param,
grad, buffer; write param, buffer), the fraction of the roofline, the ratio to each peer,
compile time, and peak memory from a fresh process per variant against the ideal
params + grads + buffers. The roofline is an in-place ``y += a * x`` over 64M floats
measured in the same process (12 bytes per element); "ideal step" is 20 bytes per parameter
at that bandwidth. Results are printed and written as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4
VARIANTS = ("sgdx_fused", "sgdx", "optax", "torch_fused", "torch_foreach", "torch_single")


def gpt2_shapes() -> list[tuple[int, ...]]:
    """GPT-2 small: 124M parameters in 148 leaves."""
    d, layers = 768, 12
    block = [
        (d,),
        (d,),
        (d, 3 * d),
        (3 * d,),
        (d, d),
        (d,),
        (d,),
        (d,),
        (d, 4 * d),
        (4 * d,),
        (4 * d, d),
        (d,),
    ]
    return [(50257, d), (1024, d), *block * layers, (d,), (d,)]


def resnet50_shapes() -> list[tuple[int, ...]]:
    """ResNet-50: 25.6M parameters in 161 leaves (convolutions, batch-norm scale/shift, fc)."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            shapes += [(width, inplanes, 1, 1), (width,), (width,)]
            shapes += [(width, width, 3, 3), (width,), (width,)]
            shapes += [(4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if block == 0:
                shapes += [(4 * width, inplanes, 1, 1), (4 * width,), (4 * width,)]
            inplanes = 4 * width
    return [*shapes, (1000, 2048), (1000,)]


def many_leaves_shapes() -> list[tuple[int, ...]]:
    """2000 small leaves, 11M parameters."""
    sizes = np.random.default_rng(0).integers(1000, 10000, 2000)
    sizes = np.maximum((sizes * (11_000_000 / sizes.sum())).astype(int), 1)
    return [(int(s),) for s in sizes]


MODELS = {"gpt2": gpt2_shapes, "resnet50": resnet50_shapes, "many_leaves": many_leaves_shapes}


def make_variant(name: str, shapes: list[tuple[int, ...]]):
    """Returns (step, compile_seconds): ``step()`` runs one optimizer step and waits for it."""
    if name.startswith("torch"):
        import torch

        params = [torch.full(s, 0.1) for s in shapes]  # built in place: no host copies
        for p in params:
            p.grad = torch.full(p.shape, 0.01)
        flags = {"torch_fused": {"fused": True}, "torch_foreach": {"foreach": True},
                 "torch_single": {"foreach": False}}[name]  # fmt: skip
        opt = torch.optim.SGD(
            params, lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY, **flags
        )
        opt.step()  # creates the momentum buffers
        return opt.step, 0.0

    import jax
    import jax.numpy as jnp

    params = [jnp.full(s, 0.1, jnp.float32) for s in shapes]
    grads = [jnp.full(s, 0.01, jnp.float32) for s in shapes]
    if name == "optax":
        import optax

        tx = optax.chain(
            optax.add_decayed_weights(WEIGHT_DECAY),
            optax.sgd(LR, momentum=MOMENTUM, nesterov=True),
        )

        def run(p, s, g):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        jitted = jax.jit(run, donate_argnums=(0, 1))
        order = ("p", "s", "g")
    else:
        import sgdx

        if name == "sgdx_fused":
            tx = sgdx.fused_sgd(LR, MOMENTUM, weight_decay=WEIGHT_DECAY, nesterov=True)
            jitted = jax.jit(tx.step, donate_argnums=(0, 2))
            order = ("p", "g", "s")
        else:
            tx = sgdx.sgd(LR, MOMENTUM, weight_decay=WEIGHT_DECAY, nesterov=True)

            def run(p, s, g):
                u, s = tx.update(g, s, p)
                return sgdx.apply_updates(p, u), s

            jitted = jax.jit(run, donate_argnums=(0, 1))
            order = ("p", "s", "g")
    holder = {"p": params, "s": tx.init(params), "g": grads}
    start = time.perf_counter()
    compiled = jitted.lower(*(holder[k] for k in order)).compile()
    compile_seconds = time.perf_counter() - start

    def step():
        out = compiled(*(holder[k] for k in order))
        holder["p"], holder["s"] = out
        jax.block_until_ready(holder["p"])

    step()  # a first update, so that momentum buffers are live as in torch
    return step, compile_seconds


def roofline_gbps(rounds: int) -> float:
    """In-place ``y += a * x`` over 64M float32 with torch's multithreaded kernel."""
    import torch

    y, x = torch.ones(64 << 20), torch.full((64 << 20,), 0.5)
    times = []
    for _ in range(rounds + 3):
        start = time.perf_counter()
        y.add_(x, alpha=1e-3)
        times.append(time.perf_counter() - start)
    return 12 * y.numel() / float(np.median(times[3:])) / 1e9


def peak_memory(model: str, variant: str) -> float:
    """Peak resident memory of a fresh process running the variant, minus its baseline."""
    here = str(Path(__file__).parent)
    # VmHWM, this process's own high-water mark (ru_maxrss would inherit the parent's peak)
    code = (
        f"import re, sys; sys.path.insert(0, {here!r}); import sgd_step as b\n"
        "import jax, torch, optax, sgdx\n"
        "hwm = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])\n"
        "base = hwm()\n"
        f"step, _ = b.make_variant({variant!r}, b.MODELS[{model!r}]())\n"
        "for _ in range(3): step()\n"
        "print((hwm() - base) * 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def child(model: str, rounds: int, variants: list[str], memory: bool) -> dict:
    shapes = MODELS[model]()
    n = int(sum(np.prod(s) for s in shapes))
    steps, compile_times = {}, {}
    for name in variants:
        steps[name], compile_times[name] = make_variant(name, shapes)
    for _ in range(3):  # warm-up
        for name in variants:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name in variants:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    roofline = roofline_gbps(rounds)
    ideal_bytes = 3 * 4 * n
    result = {"model": model, "params": n, "leaves": len(shapes), "roofline_gbps": roofline,
              "ideal_step_ms": 20 * n / roofline / 1e6, "variants": {}}  # fmt: skip
    for name in variants:
        t = np.asarray(times[name])
        entry = {
            "median_ms": float(np.median(t) * 1e3),
            "min_ms": float(t.min() * 1e3),
            "max_ms": float(t.max() * 1e3),
            "gbps": 20 * n / float(np.median(t)) / 1e9,
            "compile_s": compile_times[name],
        }
        entry["roofline_fraction"] = entry["gbps"] / roofline
        if memory:
            entry["peak_over_ideal"] = peak_memory(model, name) / ideal_bytes
        result["variants"][name] = entry
    return result


def table(result: dict) -> str:
    variants = result["variants"]
    lines = [
        f"{result['model']}: {result['params'] / 1e6:.1f}M params in {result['leaves']} leaves; "
        f"roofline {result['roofline_gbps']:.1f} GB/s, ideal step {result['ideal_step_ms']:.1f} ms",
        f"{'variant':<14}{'median ms':>10}{'(min-max)':>16}{'GB/s':>7}{'roofline':>9}"
        f"{'vs torch_fused':>15}{'vs optax':>9}{'compile s':>10}{'peak/ideal':>11}",
    ]
    for name, v in variants.items():
        vs_fused = (
            v["median_ms"] / variants["torch_fused"]["median_ms"]
            if "torch_fused" in variants
            else float("nan")
        )
        vs_optax = (
            v["median_ms"] / variants["optax"]["median_ms"] if "optax" in variants else float("nan")
        )
        peak = f"{v['peak_over_ideal']:.2f}" if "peak_over_ideal" in v else "-"
        span = "({:.1f}-{:.1f})".format(v["min_ms"], v["max_ms"])
        lines.append(
            f"{name:<14}{v['median_ms']:>10.2f}{span:>16}"
            f"{v['gbps']:>7.1f}{v['roofline_fraction']:>9.2f}{vs_fused:>15.2f}{vs_optax:>9.2f}"
            f"{v['compile_s']:>10.2f}{peak:>11}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rounds, args.variants, not args.no_memory)))
        return
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}"
    results = {"machine": machine, "time": time.strftime("%Y-%m-%d %H:%M"), "models": []}
    for model in args.models:  # one process per model
        command = [sys.executable, __file__, "--child", model, "--rounds", str(args.rounds)]
        command += ["--variants", *args.variants, *(["--no-memory"] if args.no_memory else [])]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        results["models"].append(result)
        print(table(result), "\n", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"machine: {machine}; results written to {args.out}")


if __name__ == "__main__":
    main()
