"""sgdx on whatever JAX backend is found: parity, then throughput against the device's copy
bandwidth.

    python benchmarks/accelerator.py [--out benchmarks/results_accelerator.json]
    python benchmarks/accelerator.py --smoke   # tiny sizes, two rounds: a check, not figures

1. Parity: the parity suite's torch configurations (``tests/oracle.py``: momentum,
   dampening, nesterov, weight decay, maximize, an lr drop mid-run) stepped on the device in
   float32, against a float64 reference on the CPU (real ``torch.optim.SGD`` when torch is
   importable, else sgdx's pure-JAX path); the largest error relative to each leaf's scale.
   Then ``sgdx.step`` against ``update`` + ``apply_updates`` on the device (largest
   difference).
2. Throughput: ``sgdx.step``, ``update`` + ``apply_updates`` (both ``sgdx.sgd(0.1, 0.9,
   weight_decay=1e-4, nesterov=True)``) and optax's ``chain(add_decayed_weights,
   sgd(nesterov))`` on ResNet-50, GPT-2 small and 2000-small-leaf shapes, in float32 and in
   bfloat16 with float32 momentum buffers, each its own ``jax.jit`` with parameters and
   state donated. Variants take turns, one sample each per round; the table gives medians,
   the bandwidth the step reaches (bytes it must move: read parameter, gradient, buffer;
   write parameter, buffer) as a fraction of the roofline, a jitted copy of a 1 GiB array on
   the same device (256 MiB on CPU), and compile times.
3. torch ``SGD(fused=True)`` beside them on CUDA when a CUDA torch is importable.

It writes one JSON (``--out``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import sgd_step  # noqa: E402  (the shapes)

import sgdx  # noqa: E402
from tests import oracle  # noqa: E402

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4
MODES = {"float32": (jnp.float32, None), "bf16+f32 buffers": (jnp.bfloat16, jnp.float32)}


def parity(device: jax.Device) -> dict[str, Any]:
    """Largest scaled error of a float32 run on ``device`` against the float64 reference."""
    try:
        import torch  # noqa: F401

        reference_name = "torch.optim.SGD float64 (CPU)"
    except ImportError:
        reference_name = "sgdx pure-JAX float64 (CPU)"
    cpu = jax.devices("cpu")[0]
    errors = {}
    for name, kwargs in oracle.CONFIGS:
        maximize = kwargs.get("maximize", False)
        lrs = oracle.learning_rates(kwargs)
        if reference_name.startswith("torch"):
            expected = oracle.run_torch(
                kwargs, oracle.make_problem(1, np.float64, maximize=maximize), np.float64
            )
        else:
            with jax.default_device(cpu):
                tx = oracle.sgdx_optimizer(kwargs, lrs, fused=False)
                expected = oracle.run_sgdx(
                    tx, oracle.make_problem(1, np.float64, maximize=maximize)
                )
        with jax.default_device(device):
            tx = oracle.sgdx_optimizer(kwargs, lrs.astype(np.float32))
            actual = oracle.run_sgdx(tx, oracle.make_problem(1, np.float32, maximize=maximize))
        worst = 0.0
        for key, e in expected.items():
            scale = np.nanmax(np.abs(e)) if not np.all(np.isnan(e)) else 0.0
            diff = np.abs(actual[key].astype(np.float64) - e) / (np.abs(e) + scale + 1e-300)
            worst = max(worst, float(np.nanmax(diff, initial=0.0)))
        errors[name] = worst
    with jax.default_device(device):
        tx = sgdx.sgd(LR, MOMENTUM, weight_decay=WEIGHT_DECAY, nesterov=True)
        params = {
            k: jnp.asarray(v) for k, v in oracle.make_problem(2, np.float32)["params"].items()
        }
        grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
        step_state = update_state = tx.init(params)
        step_params = update_params = params

        @jax.jit
        def by_update(p, s):
            u, s = tx.update(grads, s, p)
            return sgdx.apply_updates(p, u), s

        by_step = jax.jit(lambda p, s: sgdx.step(tx, p, grads, s))
        for _ in range(10):
            step_params, step_state = by_step(step_params, step_state)
            update_params, update_state = by_update(update_params, update_state)
        step_vs_update = max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(
                jax.tree.leaves(step_params), jax.tree.leaves(update_params), strict=True
            )
        )
    return {"reference": reference_name, "relative_error": errors, "step_vs_update": step_vs_update}


def copy_roofline(device: jax.Device, smoke: bool, rounds: int) -> float:
    """GB/s of a jitted copy (read + write) of one large array on ``device``."""
    n = (1 << 20) if smoke else ((1 << 28) if device.platform != "cpu" else (1 << 26))
    x = jax.device_put(np.ones(n, np.float32), device)
    copy = jax.jit(lambda x: x * np.float32(1))
    copy(x).block_until_ready()
    times = []
    for _ in range(max(rounds, 3)):
        start = time.perf_counter()
        copy(x).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * x.nbytes / statistics.median(times) / 1e9


def variants(shapes: list[tuple[int, ...]], mode: str, device: jax.Device) -> dict[str, Any]:
    """name -> (sample, compile seconds, bytes moved per step)."""
    dtype, buffers = MODES[mode]
    params = [jax.device_put(np.full(s, 0.1, dtype), device) for s in shapes]
    grads = [jax.device_put(np.full(s, 0.01, dtype), device) for s in shapes]
    n = sum(int(np.prod(s)) for s in shapes)
    width, buffer_width = np.dtype(dtype).itemsize, np.dtype(buffers or dtype).itemsize
    moved = n * (3 * width + 2 * buffer_width)  # read p, g, b; write p, b
    tx = sgdx.sgd(LR, MOMENTUM, weight_decay=WEIGHT_DECAY, nesterov=True, accumulator_dtype=buffers)

    def by_update(p, s, g):
        u, s = tx.update(g, s, p)
        return sgdx.apply_updates(p, u), s

    steps = {"sgdx.step": lambda p, s, g: sgdx.step(tx, p, g, s), "update+apply": by_update}
    states = {name: tx.init(params) for name in steps}
    try:
        import optax

        otx = optax.chain(
            optax.add_decayed_weights(WEIGHT_DECAY),
            optax.sgd(LR, momentum=MOMENTUM, nesterov=True, accumulator_dtype=buffers),
        )

        def by_optax(p, s, g):
            u, s = otx.update(g, s, p)
            return optax.apply_updates(p, u), s

        steps["optax"] = by_optax
        states["optax"] = otx.init(params)
    except ImportError:
        pass
    out = {}
    for name, fn in steps.items():
        holder = {"p": [jnp.copy(p) for p in params], "s": states[name]}
        start = time.perf_counter()
        compiled = (
            jax.jit(fn, donate_argnums=(0, 1)).lower(holder["p"], holder["s"], grads).compile()
        )
        seconds = time.perf_counter() - start

        def sample(compiled=compiled, holder=holder):
            holder["p"], holder["s"] = compiled(holder["p"], holder["s"], grads)
            jax.block_until_ready(holder["p"])

        sample()
        out[name] = (sample, seconds, moved)
    return out


def torch_cuda(shapes: list[tuple[int, ...]], mode: str) -> Any:
    """torch SGD(fused=True) on CUDA, or None without a CUDA torch."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    dtype = {"float32": torch.float32, "bf16+f32 buffers": torch.bfloat16}[mode]
    params = [torch.full(s, 0.1, device="cuda", dtype=dtype) for s in shapes]
    for p in params:
        p.grad = torch.full_like(p, 0.01)
    opt = torch.optim.SGD(
        params, lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY, fused=True
    )
    opt.step()

    def sample():
        opt.step()
        torch.cuda.synchronize()

    width = torch.finfo(dtype).bits // 8
    return sample, 0.0, sum(int(np.prod(s)) for s in shapes) * 5 * width


def throughput(device: jax.Device, smoke: bool, rounds: int, roofline: float) -> dict:
    results = {}
    for model, make in sgd_step.MODELS.items():
        shapes = make()
        if smoke:  # the same leaf count, tiny leaves
            shapes = [(min(int(np.prod(s)), 8),) for s in shapes][:50]
        for mode in MODES:
            runs = variants(shapes, mode, device)
            if (peer := torch_cuda(shapes, mode)) is not None:
                runs["torch fused (CUDA)"] = peer
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(rounds):
                for name, (sample, _, _) in runs.items():
                    start = time.perf_counter()
                    sample()
                    times[name].append(time.perf_counter() - start)
            rows = {}
            for name, (_, compile_seconds, moved) in runs.items():
                median = statistics.median(times[name])
                rows[name] = {
                    "median_ms": 1e3 * median,
                    "gbps": moved / median / 1e9,
                    "of_roofline": moved / median / 1e9 / roofline,
                    "compile_s": compile_seconds,
                }
            results[f"{model} / {mode}"] = {
                "params": sum(int(np.prod(s)) for s in shapes),
                "leaves": len(shapes),
                "rows": rows,
            }
    return results


def table(report: dict) -> str:
    lines = [
        f"device: {report['device']}; roofline (jitted copy) {report['roofline_gbps']:.1f} GB/s",
        f"parity vs {report['parity']['reference']}: largest relative error "
        f"{max(report['parity']['relative_error'].values()):.2e} over "
        f"{len(report['parity']['relative_error'])} configurations; sgdx.step vs update + "
        f"apply_updates: {report['parity']['step_vs_update']:.1e}",
    ]
    for run, result in report["throughput"].items():
        lines.append(f"\n{run}: {result['params'] / 1e6:.1f}M params in {result['leaves']} leaves")
        lines.append(
            f"{'variant':<22}{'median ms':>11}{'GB/s':>9}{'roofline':>10}{'compile s':>11}"
        )
        for name, row in result["rows"].items():
            lines.append(
                f"{name:<22}{row['median_ms']:>11.3f}{row['gbps']:>9.1f}"
                f"{row['of_roofline']:>10.2f}{row['compile_s']:>11.2f}"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: a check, not figures")
    parser.add_argument("--rounds", type=int, help="default 20 (2 with --smoke)")
    parser.add_argument("--out", default="benchmarks/results_accelerator.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    rounds = args.rounds or (2 if args.smoke else 20)
    jax.config.update("jax_enable_x64", True)  # the float64 reference; runs give dtypes
    device = jax.devices()[0]
    roofline = copy_roofline(device, args.smoke, rounds)
    report = {
        "device": f"{device.platform}: {device.device_kind} ({platform.machine()})",
        "jax": jax.__version__,
        "roofline_gbps": roofline,
        "parity": parity(device),
        "throughput": throughput(device, args.smoke, rounds, roofline),
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(table(report))
    return report


if __name__ == "__main__":
    main()
