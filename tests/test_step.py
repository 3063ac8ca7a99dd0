"""sgd's native paths (its update, and the in-place sgdx.step) against the pure-JAX path
(fused=False) and against torch."""

from __future__ import annotations

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import sgdx
from tests import oracle
from tests.compiles import counted


def test_native_kernel_is_built_here():
    """CI and development machines have a C++ compiler: the fast path must be live there."""
    assert sgdx.native_status().available, sgdx.native_status().reason


def one_group(params):
    return jax.tree.map(lambda _: "all", params)


# sgd as it is, and inside each wrapper that keeps its in-place step
WRAPPERS = {
    "sgd": lambda schedule, **options: sgdx.sgd(schedule, **options),
    "inject_hyperparams": lambda schedule, **options: sgdx.inject_hyperparams(sgdx.sgd)(
        schedule, **options
    ),
    "param_groups": lambda schedule, **options: sgdx.param_groups(
        one_group, {"all": {}}, learning_rate=schedule, **options
    ),
    "skip_nonfinite": lambda schedule, **options: sgdx.skip_nonfinite(
        sgdx.sgd(schedule, **options), grad_scale=2.0
    ),
    "chain": lambda schedule, **options: sgdx.chain(sgdx.identity(), sgdx.sgd(schedule, **options)),
}


def wrapped_from_config(kwargs, lrs, wrapper):
    table = jnp.asarray(np.asarray(lrs))
    options = {k: v for k, v in kwargs.items() if k != "lr"}
    return WRAPPERS[wrapper](lambda count: table[count], **options)


def run_steps(opt, problem, steps=oracle.STEPS, donate=True, grad_scale=1.0):
    params = {k: jnp.asarray(v) for k, v in problem["params"].items()}
    state = opt.init(params)
    step = jax.jit(sgdx.step, static_argnums=0, donate_argnums=(1, 3) if donate else ())
    out = {f"param/{k}": [] for k in params} | {f"buf/{k}": [] for k in params}
    for k in range(steps):
        grads = oracle.gradient(problem, {n: np.asarray(p) for n, p in params.items()}, k)
        grads = {n: g * grad_scale for n, g in grads.items()}
        params, state = step(opt, params, grads, state)
        buffers = oracle.momentum_buffers(state)
        for name, p in params.items():
            out[f"param/{name}"].append(np.asarray(p))
            out[f"buf/{name}"].append(buffers.get(name, np.full(p.shape, np.nan, p.dtype)))
    return {k: np.stack(v) for k, v in out.items()}


def kernel_in(opt, params, grads, state):
    """Whether jax.jit of sgdx.step, lowered for CPU, calls the native kernel."""
    lowered = jax.jit(sgdx.step, static_argnums=0).lower(opt, params, grads, state)
    return "sgdx_sgd_step_f" in lowered.as_text()


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(("name", "kwargs"), oracle.CONFIGS, ids=[n for n, _ in oracle.CONFIGS])
def test_step_through_every_wrapper_runs_the_kernel_and_matches_torch(name, kwargs, dtype, wrapper):
    """For each wrapper: the kernel is in the lowered step wherever it fits (PyTorch
    convention with momentum), and the steps equal update + apply_updates and torch."""
    problem = oracle.make_problem(11, dtype, maximize=kwargs.get("maximize", False))
    lrs = oracle.learning_rates(kwargs)
    opt = wrapped_from_config(kwargs, lrs, wrapper)
    params = {k: jnp.asarray(v) for k, v in problem["params"].items()}
    fits = bool(kwargs.get("momentum"))
    assert kernel_in(opt, params, params, opt.init(params)) == fits
    scale = 2.0 if wrapper == "skip_nonfinite" else 1.0  # its grad_scale
    stepped = run_steps(opt, problem, grad_scale=scale)
    reference = oracle.run_sgdx(oracle.sgdx_optimizer(kwargs, lrs, fused=False), problem)
    oracle.assert_trajectories_close(stepped, reference)
    pytest.importorskip("torch")
    torch_run = oracle.run_torch(kwargs, problem, dtype)
    oracle.assert_trajectories_close(stepped, torch_run, kwargs.get("momentum", 0.0))


def test_where_the_kernel_runs():
    """step: by default and with fused=True; fused=False: never; update: never (XLA fuses
    the standard update better where its result is wanted)."""
    params = {"w": jnp.linspace(-1.0, 1.0, 7, dtype=jnp.float32)}
    grads = {"w": jnp.ones(7, jnp.float32)}
    for fused, in_step in ((None, True), (True, True), (False, False)):
        opt = sgdx.sgd(0.1, momentum=0.9, weight_decay=0.1, fused=fused)
        state = opt.init(params)
        update = jax.make_jaxpr(opt.update)(grads, state, params)
        step = jax.make_jaxpr(lambda *a, opt=opt: sgdx.step(opt, *a))(params, grads, state)
        assert "sgdx_sgd_step" not in str(update), fused
        assert ("sgdx_sgd_step" in str(step)) == in_step, fused
        # the platform is chosen at lowering, not in Python: the kernel where it is lowered
        # for CPU, the reference for any other platform, from the same trace
        for platform, kernel in (("cpu", in_step), ("cuda", False), ("tpu", False)):
            exported = export.export(
                jax.jit(lambda *a, opt=opt: sgdx.step(opt, *a)),
                platforms=(platform,),
                disabled_checks=[export.DisabledSafetyCheck.custom_call("sgdx_sgd_step_f32")],
            )(params, grads, state)
            assert ("sgdx_sgd_step_f32" in exported.mlir_module()) == kernel, (fused, platform)
            if platform == "cpu":  # the exported step runs where sgdx is imported
                jitted = jax.jit(lambda *a, opt=opt: sgdx.step(opt, *a))(params, grads, state)
                chex.assert_trees_all_equal(exported.call(params, grads, state), jitted)


def test_step_outside_jit_is_the_jitted_step():
    """``sgdx.step`` called eagerly, as torch's ``optimizer.step()`` is: the kernel, compiled
    once, with the jitted step's numbers, its inputs left as they were (nothing donated)."""
    opt = sgdx.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.1)
    params = {"w": jnp.linspace(-1.0, 1.0, 7, dtype=jnp.float32), "b": jnp.ones(2, jnp.float32)}
    grads = jax.tree.map(jnp.cos, params)
    state = opt.init(params)
    before = jax.tree.map(np.asarray, (params, state))
    jitted = jax.jit(lambda *a: sgdx.step(opt, *a))(params, grads, state)
    chex.assert_trees_all_equal(sgdx.step(opt, params, grads, state), jitted)
    with counted() as compiles:
        again = sgdx.step(opt, params, grads, state)
    assert compiles == []  # the second call reuses what the first compiled
    chex.assert_trees_all_equal(again, jitted)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, (params, state)), before)


def test_fused_true_where_the_kernel_cannot_run():
    for options in (
        {},
        {"convention": "sutskever", "momentum": 0.9},
        {"momentum": 0.9, "decoupled_weight_decay": True, "weight_decay": 0.1},
    ):
        with pytest.raises(ValueError, match="fused=True needs"):
            sgdx.sgd(0.1, fused=True, **options)
    with pytest.raises(TypeError, match="fused must be a bool"):
        sgdx.sgd(0.1, 0.9, fused=1)


def test_fused_step_without_donation_leaves_inputs_intact():
    opt = sgdx.sgd(0.1, momentum=0.9, weight_decay=0.1)
    params = {"w": jnp.linspace(-1.0, 1.0, 7, dtype=jnp.float32)}
    grads = {"w": jnp.ones(7, jnp.float32)}
    state = opt.init(params)
    before = jax.tree.map(np.array, (params, state))
    new_params, new_state = jax.jit(sgdx.step, static_argnums=0)(opt, params, grads, state)
    chex.assert_trees_all_equal(jax.tree.map(np.array, (params, state)), before)
    updates, expected_state = opt.update(grads, state, params)
    chex.assert_trees_all_close(new_params, sgdx.apply_updates(params, updates), rtol=1e-7)
    chex.assert_trees_all_close(new_state, expected_state, rtol=1e-7)


@pytest.mark.parametrize(
    ("params", "grads", "opt"),
    [
        (
            {"w": jnp.ones(3, jnp.bfloat16)},
            {"w": jnp.ones(3, jnp.bfloat16)},
            sgdx.sgd(0.1, 0.9),
        ),
        ({"w": jnp.ones(3, jnp.float32)}, {"w": jnp.ones(3, jnp.float32)}, sgdx.sgd(0.1)),
        (
            {"w": jnp.ones(3, jnp.float32), "v": jnp.ones(2, jnp.float64)},
            {"w": jnp.ones(3, jnp.float32), "v": jnp.ones(2, jnp.float64)},
            sgdx.sgd(0.1, 0.9),
        ),
    ],
    ids=["bfloat16", "no-momentum", "mixed-dtypes"],
)
def test_fallback_cases_equal_the_reference(params, grads, opt):
    @jax.jit
    def reference(params, grads, state):
        updates, state = opt.update(grads, state, params)
        return sgdx.apply_updates(params, updates), state

    state = opt.init(params)
    for _ in range(3):
        expected, expected_state = reference(params, grads, state)
        params, state = jax.jit(sgdx.step, static_argnums=0)(opt, params, grads, state)
        chex.assert_trees_all_equal(params, expected)
        chex.assert_trees_all_equal(state, expected_state)


def test_none_gradients_leave_their_leaves_to_the_kernel_skipped():
    """A frozen leaf (None gradient for two steps, then gradients) and a non-array leaf as
    Equinox passes it (None parameter and gradient): the kernel updates the other leaves,
    and every step equals the reference path's."""
    opt = sgdx.sgd(0.1, momentum=0.9, dampening=0.2, weight_decay=0.01)
    reference = sgdx.sgd(0.1, momentum=0.9, dampening=0.2, weight_decay=0.01, fused=False)
    params = {
        "w": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32),
        "frozen": jnp.full(3, 0.5, jnp.float32),
        "activation": None,
    }
    state = opt.init(params)
    ref_params, ref_state = jax.tree.map(jnp.copy, (params, state))  # the step donates its own
    step = jax.jit(sgdx.step, static_argnums=0, donate_argnums=(1, 3))
    for k in range(4):
        grads = {
            "w": jnp.sin(ref_params["w"] + k),
            "frozen": None if k < 2 else jnp.cos(ref_params["frozen"]),
            "activation": None,
        }
        jaxpr = jax.make_jaxpr(lambda *a: sgdx.step(opt, *a))(params, grads, state)
        assert "sgdx_sgd_step" in str(jaxpr)
        updates, ref_state = reference.update(grads, ref_state, ref_params)
        ref_params = sgdx.apply_updates(ref_params, updates)
        params, state = step(opt, params, grads, state)
        chex.assert_trees_all_close((params, state), (ref_params, ref_state), rtol=1e-6)
        assert (sgdx.momentum_buffers(state)["frozen"] is not None) == (k >= 2)


@pytest.mark.parametrize(
    ("dampening", "options"),
    [(0.3, {}), (0.0, {"nesterov": True, "maximize": True})],
    ids=["dampening", "nesterov-maximize"],
)
def test_derivatives_through_steps_are_the_reference_paths(dampening, options):
    """jax.grad and jax.jvp through three steps, with respect to the initial parameters and
    every hyperparameter, equal the reference path's (the kernel has none of its own)."""
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(3, 2), "b": jnp.full(3, 0.5)}

    def loss_after_steps(hyper, params, fused):
        lr, momentum, dampening, weight_decay = hyper
        opt = sgdx.sgd(lr, momentum, dampening, weight_decay, fused=fused, **options)
        state = opt.init(params)
        for k in range(3):
            grads = jax.tree.map(lambda p: 2 * p + p**3, params)
            if fused and k % 2:  # the in-place step and the standard update, both
                params, state = sgdx.step(opt, params, grads, state)
            else:
                updates, state = opt.update(grads, state, params)
                params = sgdx.apply_updates(params, updates)
        return sum(jnp.sum(p**2) for p in jax.tree.leaves(params))

    hyper = tuple(jnp.asarray(v) for v in (0.1, 0.9, dampening, 0.01))
    grad = jax.jit(jax.grad(loss_after_steps, argnums=(0, 1)), static_argnums=2)
    chex.assert_trees_all_close(grad(hyper, params, True), grad(hyper, params, False), rtol=1e-12)
    tangents = (hyper, jax.tree.map(jnp.cos, params))
    fused, reference = (
        jax.jvp(lambda h, p, f=f: loss_after_steps(h, p, f), (hyper, params), tangents)
        for f in (True, False)
    )
    chex.assert_trees_all_close(fused, reference, rtol=1e-12)


def test_many_leaves_and_vmap():
    leaves = {f"p{i}": jnp.full((i % 7 + 1,), float(i), jnp.float32) for i in range(300)}
    grads = jax.tree.map(lambda p: jnp.sin(p), leaves)
    opt = sgdx.sgd(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    reference = sgdx.sgd(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, fused=False)
    params, state = leaves, opt.init(leaves)
    ref_params, ref_state = leaves, opt.init(leaves)
    step = jax.jit(sgdx.step, static_argnums=0)
    for _ in range(3):
        params, state = step(opt, params, grads, state)
        updates, ref_state = reference.update(grads, ref_state, ref_params)
        ref_params = sgdx.apply_updates(ref_params, updates)
    chex.assert_trees_all_close(params, ref_params, rtol=1e-6)
    batched = jax.vmap(lambda p, g: sgdx.step(opt, p, g, opt.init(p))[0])(
        jnp.ones((4, 5), jnp.float32), jnp.arange(20.0, dtype=jnp.float32).reshape(4, 5)
    )
    # first step: buf = g + wd * p, nesterov direction 1.9 * buf
    grad = jnp.arange(20.0, dtype=jnp.float32).reshape(4, 5)
    expected = 1.0 - 0.05 * 1.9 * (grad + 1e-3)
    np.testing.assert_allclose(batched, expected, rtol=1e-6, atol=1e-6)


def test_param_groups_take_one_kernel_pass_per_group_and_leave_frozen_ones():
    """Two groups with their own hyperparameters (decay / no decay, as torchvision's recipe)
    and a frozen one: one kernel call per group in the lowered step, the frozen parameter
    untouched, and every step equal to update + apply_updates."""
    params = {
        "w": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).reshape(3, 2),
        "b": jnp.full(3, 0.5, jnp.float32),
        "frozen": jnp.ones(2, jnp.float32),
    }
    labels = {"w": "decay", "b": "no_decay", "frozen": "frozen"}
    opt = sgdx.param_groups(
        labels,
        {"decay": {"weight_decay": 1e-2}, "no_decay": {"learning_rate": 0.2}, "frozen": None},
        learning_rate=0.1,
        momentum=0.9,
        nesterov=True,
    )
    state = opt.init(params)
    grads = jax.tree.map(jnp.cos, params)
    text = jax.jit(sgdx.step, static_argnums=0).lower(opt, params, grads, state).as_text()
    assert text.count("sgdx_sgd_step_f32") == 2
    reference = jax.jit(lambda p, g, s: update_and_apply(opt, p, g, s))
    step = jax.jit(sgdx.step, static_argnums=0, donate_argnums=(1, 3))
    ref_params, ref_state = jax.tree.map(jnp.copy, (params, state))
    for _ in range(3):
        grads = jax.tree.map(jnp.sin, ref_params)
        ref_params, ref_state = reference(ref_params, grads, ref_state)
        params, state = step(opt, params, grads, state)
        chex.assert_trees_all_close((params, state), (ref_params, ref_state), rtol=1e-6)
    np.testing.assert_array_equal(params["frozen"], np.ones(2, np.float32))


def update_and_apply(tx, params, grads, state):
    updates, state = tx.update(grads, state, params)
    return sgdx.apply_updates(params, updates), state


def test_skip_nonfinite_step_skips_a_nonfinite_step_whole():
    opt = sgdx.skip_nonfinite(sgdx.sgd(0.1, momentum=0.9))
    params = {"w": jnp.ones(3, jnp.float32)}
    state = opt.init(params)
    step = jax.jit(sgdx.step, static_argnums=0)
    params, state = step(opt, params, {"w": jnp.ones(3, jnp.float32)}, state)
    before = jax.tree.map(np.asarray, (params, state.inner_state))
    bad = {"w": jnp.array([1.0, jnp.inf, 1.0], jnp.float32)}
    params, state = step(opt, params, bad, state)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, (params, state.inner_state)), before)
    assert int(state.skipped) == 1


def test_a_wrapper_that_hides_the_step_warns_once_and_fused_true_raises():
    """optax's combinators do not carry sgdx's step: the step runs update + apply_updates
    (the same numbers), says so once naming the wrapper, and fused=True refuses."""
    optax = pytest.importorskip("optax")
    params = {"w": jnp.linspace(-1.0, 1.0, 5, dtype=jnp.float32)}
    grads = {"w": jnp.ones(5, jnp.float32)}
    opt = optax.chain(sgdx.sgd(0.1, momentum=0.9), optax.clip(1.0))
    state = opt.init(params)
    with pytest.warns(RuntimeWarning, match=r"optax\.chain wraps an sgdx\.sgd"):
        stepped = jax.jit(sgdx.step, static_argnums=0)(opt, params, grads, state)
    chex.assert_trees_all_equal(stepped, update_and_apply(opt, params, grads, state))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per wrapper: optax.chain has warned already
        sgdx.step(opt, params, grads, state)
    opt = sgdx.chain(sgdx.sgd(0.1, momentum=0.9), optax.clip(1.0))  # clipping after sgd
    with pytest.warns(RuntimeWarning, match=r"sgdx\.chain wraps an sgdx\.sgd"):
        stepped = sgdx.step(opt, params, grads, opt.init(params))
    chex.assert_trees_all_equal(stepped, update_and_apply(opt, params, grads, opt.init(params)))
    required = optax.chain(sgdx.sgd(0.1, momentum=0.9, fused=True), optax.clip(1.0))
    with pytest.raises(ValueError, match=r"fused=True.*through optax\.chain"):
        sgdx.step(required, params, grads, required.init(params))
    unwanted = optax.chain(sgdx.sgd(0.1, momentum=0.9, fused=False), optax.clip(1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sgdx.step(unwanted, params, grads, unwanted.init(params))


def test_a_from_torch_run_steps_with_the_kernel_and_donates_its_state():
    """A torchvision-style two-group torch optimizer handed over: the step has one kernel
    pass per group, the state (as from_torch returns it) can be donated, and the steps
    equal torch's."""
    torch = pytest.importorskip("torch")
    from sgdx.interop.torch import from_torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.1,
        momentum=0.9,
        nesterov=True,
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)
    data = torch.randn(8, 4, dtype=torch.float32)

    def torch_step():
        optimizer.zero_grad()
        model(data).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()

    torch_step()
    run = from_torch(optimizer, model, scheduler)
    params, state = run.params, run.state
    names = [n for n, _ in model.named_parameters()]

    def grads_of(params):
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.from_numpy(np.array(params[name])))
        model.zero_grad()
        model(data).pow(2).mean().backward()
        return {n: jnp.asarray(p.grad.numpy()) for n, p in model.named_parameters()}

    text = jax.jit(sgdx.step, static_argnums=0).lower(run.tx, params, params, state).as_text()
    assert text.count("sgdx_sgd_step_f32") == 2
    step = jax.jit(sgdx.step, static_argnums=0, donate_argnums=(1, 3))
    expected = []  # torch's next four steps (grads_of then overwrites the model's parameters)
    for _ in range(4):
        torch_step()
        expected.append({n: p.detach().numpy().copy() for n, p in model.named_parameters()})
    for want in expected:
        params, state = step(run.tx, params, grads_of(params), state)
        for name in names:
            scale = np.abs(want[name]).max()  # float32: 1e-6 of the largest value reached
            np.testing.assert_allclose(params[name], want[name], rtol=0, atol=1e-6 * scale)


def test_the_private_jax_registry_the_kernel_needs_is_there():
    """Sharded steps partition the kernel with custom_partitioning, which needs the devices
    at lowering: JAX gives them only to primitives in a private registry. When JAX moves it,
    this fails (and importing sgdx warns that multi-device steps run the pure-JAX path)."""
    from jax._src import dispatch

    from sgdx import _kernel_primitive

    assert _kernel_primitive.DEVICES_DURING_LOWERING
    assert _kernel_primitive._step_p in dispatch.prim_requires_devices_during_lowering
