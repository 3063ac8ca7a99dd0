"""SGD step benchmark: sgdx against optax, torch and the memory-bandwidth roofline.

    python benchmarks/sgd_step.py [--models gpt2 resnet50 many_leaves] [--rounds 20]
    python benchmarks/sgd_step.py --device gpu --out benchmarks/results_gpu.json
    python benchmarks/sgd_step.py --smoke  # tiny sizes: a check that it runs, not figures

Configuration: float32, momentum 0.9, nesterov, weight decay 1e-4, lr 0.1. Each model runs
in a process of its own; inside it every variant is warmed up, then the variants take turns
(one sample each per round, in a new random order each round) so that they see the same
machine state. Each timed sample follows an untimed one of the same variant: a framework's
threads still spin for a while after its step, and a JAX step timed right after torch's paid
about 4 ms more on ResNet-50 (2 cores) than the same step timed after itself. Even after the
untimed sample, the variant that always came first after torch's measured up to 7% slower
than the same variant placed elsewhere, hence the order drawn anew. The table reports
the median (min-max) step time, effective bandwidth at 20 bytes per parameter (read param,
grad, buffer; write param, buffer), the fraction of the roofline, the ratio to each peer,
compile time, and peak memory from a fresh process per variant against the ideal
params + grads + buffers: the whole run's ("peak/ideal") and what the steps allocate beyond
their inputs ("step+"). The roofline is an in-place ``y += a * x`` (torch's kernel, 12 bytes
per element) measured in the same process; "ideal step" is 20 bytes per parameter at that
bandwidth. Results are printed and written as JSON (``--out``).

The sgdx variants: ``sgdx_fused`` is ``sgdx.step(sgdx.sgd(...), ...)`` (one in-place pass of
the native kernel), ``sgdx`` ``update`` + ``apply_updates`` (the pure-JAX path).
``sgdx_from_torch`` is ``sgdx.step`` on the run ``from_torch`` hands over from a torch
optimizer with torchvision's two groups (weight decay on the weights, none on the 1-D
parameters) and a ``StepLR`` scheduler, against ``torch_fused_groups``, that torch optimizer
with ``fused=True``.

A sample is ``--steps-per-sample`` steps issued back to back, then one wait (default 1 on
CPU, 20 on a GPU, where a step is shorter than a host round trip). ``sgdx_fused_flat`` is
the fused step on the same number of parameters in one array, the layout
``jax.flatten_util.ravel_pytree`` gives (built as one array, not raveled per step): one
array per tree crosses the ``jit`` boundary instead of one per leaf. ``sgdx_in_jit`` and
``sgdx_fused_in_jit`` run a sample of at least 10 steps in one ``jax.jit`` (a
``lax.fori_loop``), as inside a jitted training step: the update without per-call dispatch
(times are per step). ``jax_floor`` computes nothing: a ``jax.jit`` of ``(params, grads) ->
params`` with ``params`` donated, the least that any JAX step over the same pytree, called as
a jit of its own, spends passing its arrays in and out.
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
IN_JIT_STEPS = 10
VARIANTS = (
    "sgdx_fused",
    "sgdx_fused_flat",
    "sgdx_from_torch",
    "sgdx",
    "sgdx_in_jit",
    "sgdx_fused_in_jit",
    "optax",
    "torch_fused",
    "torch_fused_groups",
    "torch_foreach",
    "torch_single",
    "jax_floor",
)
GPU_VARIANTS = (
    "sgdx",
    "sgdx_fused_flat",
    "sgdx_in_jit",
    "optax",
    "torch_fused",
    "torch_foreach",
    "jax_floor",
)


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


def model_shapes(model: str, smoke: bool) -> list[tuple[int, ...]]:
    """The model's leaf shapes; with ``--smoke`` its first 20 leaves, at most 8 per axis."""
    shapes = MODELS[model]()
    return [tuple(min(d, 8) for d in s) for s in shapes[:20]] if smoke else shapes


def torch_groups(params: list) -> list[dict]:
    """torchvision's classification recipe's groups: decay on weights, none on 1-D ones."""
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


def make_variant(name: str, shapes: list[tuple[int, ...]], device: str, steps: int):
    """Returns (sample, compile_seconds, steps_per_sample): ``sample()`` runs that many
    optimizer steps (``steps``; at least ``IN_JIT_STEPS`` for the in-jit variants), then
    waits for them."""
    if name.startswith("torch") or name == "sgdx_from_torch":
        import torch

        where = "cuda" if device == "gpu" else "cpu"
        # no host copies; trainable, as a model's parameters are (from_torch freezes others)
        params = [torch.full(s, 0.1, device=where, requires_grad=True) for s in shapes]
        for p in params:
            p.grad = torch.full(p.shape, 0.01, device=where)
        flags = {"torch_foreach": {"foreach": True}, "torch_single": {"foreach": False}}.get(
            name, {"fused": True}
        )
        groups = torch_groups(params) if name in ("torch_fused_groups", "sgdx_from_torch") else None
        opt = torch.optim.SGD(
            groups or params,
            lr=LR,
            momentum=MOMENTUM,
            nesterov=True,
            weight_decay=WEIGHT_DECAY,
            **flags,
        )
        opt.step()  # creates the momentum buffers
    if name == "sgdx_from_torch":
        import jax

        import sgdx
        from sgdx.interop.torch import from_torch

        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1)
        run = from_torch(opt, [(f"p{i}", p) for i, p in enumerate(params)], scheduler)
        grads = {
            f"p{i}": jax.device_put(np.full(s, 0.01, np.float32)) for i, s in enumerate(shapes)
        }
        holder = {"p": run.params, "s": run.state}
        start = time.perf_counter()
        step = jax.jit(sgdx.step, static_argnums=0, donate_argnums=(1, 3))
        compiled = step.lower(run.tx, holder["p"], grads, holder["s"]).compile()
        compile_seconds = time.perf_counter() - start

        def from_torch_sample():
            for _ in range(steps):
                holder["p"], holder["s"] = compiled(holder["p"], grads, holder["s"])
            jax.block_until_ready(holder["p"])

        from_torch_sample()
        return from_torch_sample, compile_seconds, steps
    if name.startswith("torch"):

        def torch_sample():
            for _ in range(steps):
                opt.step()
            if device == "gpu":
                torch.cuda.synchronize()

        return torch_sample, 0.0, steps

    import jax

    if name == "sgdx_fused_flat":  # the layout ravel_pytree gives, built directly
        shapes = [(sum(int(np.prod(s)) for s in shapes),)]

    def full(shape: tuple[int, ...], value: float) -> jax.Array:
        """From host memory (``jnp.full`` would compile once per shape), one array at a
        time: the host copy is freed when the transfer is done."""
        return jax.device_put(np.full(shape, value, np.float32)).block_until_ready()

    params = [full(s, 0.1) for s in shapes]
    grads = [full(s, 0.01) for s in shapes]
    if name == "optax":
        import optax

        tx = optax.chain(
            optax.add_decayed_weights(WEIGHT_DECAY),
            optax.sgd(LR, momentum=MOMENTUM, nesterov=True),
        )
        apply = optax.apply_updates
    else:
        import sgdx

        tx = sgdx.sgd(LR, MOMENTUM, weight_decay=WEIGHT_DECAY, nesterov=True)
        apply = sgdx.apply_updates

    def one_step(p, s, g):
        if name == "jax_floor":
            return p, s
        if name.startswith("sgdx_fused"):
            return sgdx.step(tx, p, g, s)
        u, s = tx.update(g, s, p)
        return apply(p, u), s

    if name.endswith("_in_jit"):
        steps = max(steps, IN_JIT_STEPS)

        def run(p, s, g):
            return jax.lax.fori_loop(0, steps, lambda _, ps: one_step(*ps, g), (p, s))

        calls = 1
    else:
        run, calls = one_step, steps
    holder = {"p": params, "s": () if name == "jax_floor" else tx.init(params)}
    start = time.perf_counter()
    compiled = jax.jit(run, donate_argnums=(0, 1)).lower(holder["p"], holder["s"], grads)
    compiled = compiled.compile()
    compile_seconds = time.perf_counter() - start

    def sample():
        for _ in range(calls):
            holder["p"], holder["s"] = compiled(holder["p"], holder["s"], grads)
        jax.block_until_ready(holder["p"])

    sample()  # a first update, so that momentum buffers are live as in torch
    return sample, compile_seconds, steps


def roofline_gbps(rounds: int, device: str, smoke: bool) -> float:
    """In-place ``y += a * x`` with torch's kernel: 64M float32 on CPU, 512M on a GPU (64K
    with ``--smoke``)."""
    import torch

    where, n = ("cuda", 512 << 20) if device == "gpu" else ("cpu", 64 << 20)
    n = 1 << 16 if smoke else n
    y, x = torch.ones(n, device=where), torch.full((n,), 0.5, device=where)
    times = []
    for _ in range(rounds + 3):
        start = time.perf_counter()
        y.add_(x, alpha=1e-3)
        if device == "gpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 12 * n / float(np.median(times[3:])) / 1e9


def peak_memory(model: str, variant: str, device: str, smoke: bool) -> tuple[float, float]:
    """Peak memory of a fresh process running the variant, in bytes: the whole run's (from
    after the imports: building the arrays, compiling, stepping) and the steps' own (the
    peak over three steps minus what was resident before them, i.e. what a step allocates
    beyond its inputs). On CPU from the resident set (VmHWM, this process's own high-water
    mark, reset through /proc/self/clear_refs; ru_maxrss would inherit the parent's), on a
    GPU from the allocators (JAX's ``peak_bytes_in_use``, torch's ``max_memory_allocated``;
    there the steps' own peak is not separated and reads as the whole run's)."""
    here = str(Path(__file__).parent)
    code = (
        f"import re, sys; sys.path.insert(0, {here!r}); import sgd_step as b\n"
        "import jax, torch, optax, sgdx\n"
        "status = lambda: open('/proc/self/status').read()\n"
        "kb = lambda k: 1024 * int(re.search(k + r':\\s+(\\d+)', status())[1])\n"
        "base = kb('VmHWM')\n"
        f"shapes = b.model_shapes({model!r}, {smoke})\n"
        f"sample, _, _ = b.make_variant({variant!r}, shapes, {device!r}, 1)\n"
    )
    if device == "cpu":
        code += (
            "built, before = kb('VmHWM'), kb('VmRSS')\n"
            "open('/proc/self/clear_refs', 'w').write('5')\n"
            "for _ in range(3): sample()\n"
            "print(max(built, kb('VmHWM')) - base, kb('VmHWM') - before)\n"
        )
    elif variant.startswith("torch"):
        code += "for _ in range(3): sample()\nprint(*[torch.cuda.max_memory_allocated()] * 2)\n"
    else:
        code += (
            "for _ in range(3): sample()\n"
            "print(*[jax.devices()[0].memory_stats()['peak_bytes_in_use']] * 2)\n"
        )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    whole, steps = out.stdout.strip().splitlines()[-1].split()
    return float(whole), float(steps)


def child(
    model: str, rounds: int, variants: list[str], memory: bool, device: str, steps: int,
    smoke: bool,
) -> dict:  # fmt: skip
    shapes = model_shapes(model, smoke)
    n = int(sum(np.prod(s) for s in shapes))
    samples, compile_times, sample_steps = {}, {}, {}
    for name in variants:
        samples[name], compile_times[name], sample_steps[name] = make_variant(
            name, shapes, device, steps
        )
    for _ in range(3):  # warm-up
        for name in variants:
            samples[name]()
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = np.random.default_rng(0)
    for _ in range(rounds):
        for name in order.permutation(variants):
            samples[name]()  # untimed: see the module docstring
            start = time.perf_counter()
            samples[name]()
            times[name].append((time.perf_counter() - start) / sample_steps[name])
    roofline = roofline_gbps(rounds, device, smoke)
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
            "steps_per_sample": sample_steps[name],
        }
        entry["roofline_fraction"] = entry["gbps"] / roofline
        if memory:
            whole, steps_only = peak_memory(model, name, device, smoke)
            entry["peak_over_ideal"] = whole / ideal_bytes
            entry["step_extra_over_ideal"] = steps_only / ideal_bytes
        result["variants"][name] = entry
    return result


def table(result: dict) -> str:
    variants = result["variants"]
    lines = [
        f"{result['model']}: {result['params'] / 1e6:.1f}M params in {result['leaves']} leaves; "
        f"roofline {result['roofline_gbps']:.1f} GB/s, ideal step {result['ideal_step_ms']:.3f} ms",
        f"{'variant':<17}{'median ms':>10}{'(min-max)':>18}{'GB/s':>8}{'roofline':>9}"
        f"{'vs torch_fused':>15}{'vs optax':>9}{'compile s':>10}{'peak/ideal':>11}"
        f"{'step+':>7}",
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
        extra = f"{v['step_extra_over_ideal']:.2f}" if "step_extra_over_ideal" in v else "-"
        span = "({:.3f}-{:.3f})".format(v["min_ms"], v["max_ms"])
        lines.append(
            f"{name:<17}{v['median_ms']:>10.3f}{span:>18}"
            f"{v['gbps']:>8.1f}{v['roofline_fraction']:>9.2f}{vs_fused:>15.2f}{vs_optax:>9.2f}"
            f"{v['compile_s']:>10.2f}{peak:>11}{extra:>7}"
        )
    return "\n".join(lines)


def machine(device: str) -> str:
    cpu = f"{platform.machine()}, {os.cpu_count()} cores"
    if device == "cpu":
        return cpu
    import torch

    return f"{torch.cuda.get_device_name()} (host {cpu})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, help="default: all that apply")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps-per-sample", type=int, help="default: 1 on CPU, 20 on a GPU")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument(
        "--smoke", action="store_true", help="each model's first 20 leaves, at most 8 per axis: "
        "a check that the command runs, not figures",
    )  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    variants = args.variants or list(GPU_VARIANTS if args.device == "gpu" else VARIANTS)
    steps = args.steps_per_sample or (20 if args.device == "gpu" else 1)
    if args.child:
        result = child(
            args.child, args.rounds, variants, not args.no_memory, args.device, steps, args.smoke
        )
        print(json.dumps(result))
        return
    # JAX on the benchmarked device only, allocating as it goes (torch shares the GPU)
    os.environ["JAX_PLATFORMS"] = "cuda" if args.device == "gpu" else "cpu"
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    results = {"machine": machine(args.device), "time": time.strftime("%Y-%m-%d %H:%M"),
               "models": []}  # fmt: skip
    for model in args.models:  # one process per model
        command = [sys.executable, __file__, "--child", model, "--rounds", str(args.rounds)]
        command += ["--device", args.device, "--steps-per-sample", str(steps)]
        command += ["--variants", *variants, *(["--no-memory"] if args.no_memory else [])]
        command += ["--smoke"] if args.smoke else []
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        results["models"].append(result)
        print(table(result), "\n", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"machine: {results['machine']}; results written to {args.out}")


if __name__ == "__main__":
    main()
