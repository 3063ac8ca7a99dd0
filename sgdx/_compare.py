"""`python -m sgdx compare`: the same problem under both momentum conventions, side by side."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdx import conventions, schedules
from sgdx._base import ScalarOrSchedule

PROGRESS_FROM = 2000  # runs at least this long show tqdm's progress bar on stderr, if installed


def logistic_problem(seed: int) -> tuple[Callable[[Any], jax.Array], Any]:
    """Logistic regression on 512 points of two overlapping Gaussian classes, 20 features."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 512)
    features = rng.normal(size=(512, 20)) + np.where(labels[:, None] == 1, 0.4, -0.4)
    x, y = jnp.asarray(features, jnp.float32), jnp.asarray(labels, jnp.float32)

    def loss(params: Any) -> jax.Array:
        logits = x @ params["w"] + params["b"]
        return jnp.mean(jnp.logaddexp(0.0, logits) - y * logits)

    return loss, {"w": jnp.zeros(20, jnp.float32), "b": jnp.zeros((), jnp.float32)}


def quadratic_problem(seed: int) -> tuple[Callable[[Any], jax.Array], Any]:
    """An ill-conditioned quadratic, curvatures from 0.1 to 10, minimum at 1."""
    curvature = jnp.asarray(np.geomspace(0.1, 10.0, 20), jnp.float32)

    def loss(params: Any) -> jax.Array:
        return 0.5 * jnp.sum(curvature * (params["x"] - 1) ** 2)

    start = np.random.default_rng(seed).normal(size=20)
    return loss, {"x": jnp.asarray(start, jnp.float32)}


PROBLEMS = {"logistic": logistic_problem, "quadratic": quadratic_problem}
SCHEDULES = ("constant", "step", "multistep", "exponential", "cosine")


def make_schedule(args: argparse.Namespace) -> ScalarOrSchedule:
    lr: float = args.lr
    if args.schedule == "step":
        return schedules.step_lr(lr, args.step_size, args.gamma)
    if args.schedule == "multistep":
        milestones = [args.step_size * k for k in range(1, args.steps // args.step_size + 1)]
        return schedules.multistep_lr(lr, milestones, args.gamma)
    if args.schedule == "exponential":
        return schedules.exponential_lr(lr, args.gamma)
    if args.schedule == "cosine":
        return schedules.cosine_annealing_lr(lr, args.steps)
    return lr


def table(results: dict[str, np.ndarray], every: int) -> str:
    steps = len(results["lr"]) - 1
    rows = sorted({*range(0, steps + 1, every), steps})
    header = (
        f"{'step':>6} {'lr':>9} {'loss pytorch':>13} {'loss sutskever':>15} "
        f"{'|p| pytorch':>12} {'|p| sutskever':>14} {'divergence':>11}"
    )
    lines = [header, "-" * len(header)]
    for k in rows:
        lr = "" if k == 0 else f"{results['lr'][k]:.3g}"
        lines.append(
            f"{k:>6} {lr:>9} {results['loss_pytorch'][k]:>13.6f} "
            f"{results['loss_sutskever'][k]:>15.6f} {results['norm_pytorch'][k]:>12.5f} "
            f"{results['norm_sutskever'][k]:>14.5f} {results['divergence'][k]:>11.3e}"
        )
    return "\n".join(lines)


def plot(results: dict[str, np.ndarray], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(len(results["lr"]))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(steps, results["loss_pytorch"], label="PyTorch: p -= lr * buf")
    axes[0].plot(steps, results["loss_sutskever"], "--", label="Sutskever: v = m*v - lr*g")
    axes[0].set(title="loss", xlabel="step", yscale="log")
    axes[0].legend()
    axes[1].plot(steps[1:], results["lr"][1:], color="black")
    axes[1].set(title="learning rate", xlabel="step")
    axes[2].plot(steps, np.maximum(results["divergence"], 1e-12), color="tab:red")
    axes[2].set(title="|p_pytorch - p_sutskever| (floor 1e-12)", xlabel="step", yscale="log")
    axes[2].set_ylim(bottom=1e-12)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--problem", choices=sorted(PROBLEMS), default="logistic")
    parser.add_argument("--schedule", choices=SCHEDULES, default="step")
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--dampening", type=float, default=0.0)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--nesterov", action="store_true")
    parser.add_argument(
        "--momentum-correction",
        action="store_true",
        help="rescale the Sutskever velocity when the lr changes",
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--step-size", type=int, default=50, help="step/multistep: steps per decay")
    parser.add_argument("--gamma", type=float, default=0.1, help="decay factor")
    parser.add_argument(
        "--every", type=int, default=0, help="table row interval (default: ~20 rows)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the curves into FILE.png")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.steps < 1:
        parser.error(f"--steps must be positive, got {args.steps}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install 'sgdx[cli]'")
    progress = None
    if args.steps >= PROGRESS_FROM:
        try:
            from tqdm import tqdm
        except ImportError:  # no progress bar without the cli extra
            pass
        else:
            progress = tqdm(total=args.steps, file=sys.stderr, unit="step")
    try:
        learning_rate = make_schedule(args)
        loss, params = PROBLEMS[args.problem](args.seed)
        results = conventions.compare(
            loss,
            params,
            learning_rate,
            args.steps,
            momentum=args.momentum,
            dampening=args.dampening,
            weight_decay=args.weight_decay,
            nesterov=args.nesterov,
            momentum_correction=args.momentum_correction,
            callback=None if progress is None else lambda k: progress.update(1),
        )
    except ValueError as error:
        parser.error(str(error))
    finally:
        if progress is not None:
            progress.close()
    title = (
        f"{args.problem}, {args.schedule} schedule from lr={args.lr}, momentum={args.momentum}"
        f"{', nesterov' if args.nesterov else ''}"
        f"{', momentum correction' if args.momentum_correction else ''}"
    )
    print(f"PyTorch vs Sutskever momentum: {title}")
    print(table(results, args.every or max(args.steps // 20, 1)))
    print(
        f"\nlargest divergence {np.max(results['divergence']):.3e}; final loss pytorch "
        f"{results['loss_pytorch'][-1]:.6f}, sutskever {results['loss_sutskever'][-1]:.6f}"
    )
    if args.plot:
        plot(results, args.plot, title)
        print(f"plot written to {args.plot}")
