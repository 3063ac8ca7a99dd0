"""Misuse is never silent: each class of bad input gets a TypeError / ValueError from sgdx
that says what was received and what to do, and a failing call changes nothing.

The property test at the end generates ill-typed and out-of-range values for every public
factory's arguments and checks that each is either accepted (and then computes torch's
result) or rejected with such an error, never a crash inside jax and never a silent result.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sgdx

PARAMS = {"w": jnp.ones(3), "b": jnp.zeros(1)}
GRADS = {"w": jnp.full(3, 0.5), "b": jnp.full(1, -0.5)}


# --------------------------------------------------------------- silently wrong, before


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.bool_, "int64", np.uint8])
def test_integer_or_bool_accumulator_dtype_is_refused(dtype):
    for make in (
        lambda: sgdx.sgd(0.1, 0.9, accumulator_dtype=dtype),
        lambda: sgdx.trace(0.9, accumulator_dtype=dtype),
        lambda: sgdx.sutskever_trace(0.1, 0.9, accumulator_dtype=dtype),
    ):
        with pytest.raises(TypeError, match="accumulator_dtype must be a floating"):
            make()


@pytest.mark.parametrize(
    "tx",
    [sgdx.sgd(0.1), sgdx.sgd(0.1, 0.9), sgdx.sgd(0.1, 0.9, convention="sutskever")],
    ids=["plain", "momentum", "sutskever"],
)
def test_complex_gradients_on_real_parameters_raise_as_in_torch(tx):
    grads = {"w": jnp.full(3, 0.5 + 1j), "b": jnp.full(1, 0.5 + 0j)}
    state = tx.init(PARAMS)
    with pytest.raises(TypeError, match=r"update at \['b'\] is complex .* real"):
        updates, _ = tx.update(grads, state, PARAMS)
        sgdx.apply_updates(PARAMS, updates)


def test_complex_updates_on_real_parameters_raise_in_apply_updates():
    with pytest.raises(TypeError, match=r"\['w'\] is complex"):
        sgdx.apply_updates({"w": jnp.ones(2)}, {"w": jnp.ones(2, jnp.complex64)})


def test_torch_refuses_complex_gradients_on_real_parameters_too():
    torch = pytest.importorskip("torch")
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="complex"):
        p.grad = torch.ones(2, dtype=torch.complex64)
        torch.optim.SGD([p], lr=0.1).step()


@pytest.mark.parametrize("scale", [0.0, -2.0, math.nan, math.inf, jnp.asarray(-1.0)])
def test_skip_nonfinite_refuses_a_scale_that_is_not_positive_and_finite(scale):
    with pytest.raises(ValueError, match="grad_scale must be a positive finite"):
        sgdx.skip_nonfinite(sgdx.sgd(0.1), grad_scale=scale)


def test_one_cycle_past_its_total_steps():
    schedule = sgdx.schedules.one_cycle_lr(0.1, total_steps=10)
    assert math.isfinite(float(schedule(10)))
    for count in (11, 50):
        with pytest.raises(ValueError, match=f"Tried to step {count} times. The specified"):
            schedule(count)
    # under jit it cannot raise: the value holds at the last update's (never NaN)
    assert float(jax.jit(schedule)(11)) == float(jax.jit(schedule)(500)) == float(schedule(9))
    tx = sgdx.sgd(schedule)
    state = tx.init(PARAMS)
    state = state._replace(learning_rate=state.learning_rate._replace(count=jnp.asarray(11)))
    with pytest.raises(ValueError, match="Tried to step 11 times"):
        tx.update(GRADS, state, PARAMS)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (lambda count: 0.1 + 0.0j, "complex"),
        (lambda count: jnp.asarray(0.1 + 0.1j), "complex64|complex128"),
        (lambda count: "0.1", "str '0.1'"),
        (lambda count: None, "NoneType"),
        (lambda count: jnp.asarray(True), "bool"),
        (lambda count: jnp.ones(2), r"shape \(2,\)"),
    ],
)
def test_schedules_returning_non_real_scalars(schedule, message):
    tx = sgdx.sgd(schedule)
    with pytest.raises((TypeError, ValueError), match=message):
        tx.update(GRADS, tx.init(PARAMS), PARAMS)


@pytest.mark.parametrize(
    "make",
    [
        lambda: sgdx.sgd(0.1, 0.9, True),  # torch's positional order: dampening=True
        lambda: sgdx.sgd(0.1, True),
        lambda: sgdx.sgd(True),
        lambda: sgdx.sgd(0.1, 0.9, 0.0, np.bool_(False)),
        lambda: sgdx.sgd(0.1, jnp.asarray(True)),
    ],
)
def test_bools_in_numeric_positions(make):
    with pytest.raises(TypeError, match=r"got the bool .* positional order"):
        make()


@pytest.mark.parametrize(
    "other",
    [
        sgdx.sgd(0.1),
        sgdx.sgd(0.1, 0.9, convention="sutskever"),
        sgdx.sgd(lambda count: 0.1, 0.9),
    ],
    ids=["no-momentum", "sutskever", "schedule"],
)
def test_fused_step_refuses_a_state_of_another_configuration(other):
    params = {"w": jnp.ones(3, jnp.float32)}
    grads = {"w": jnp.ones(3, jnp.float32)}
    fused = sgdx.sgd(0.1, 0.9)
    with pytest.raises((TypeError, ValueError), match=r"other options|different optimizer"):
        sgdx.step(fused, params, grads, other.init(params))


# -------------------------------------------------------------- unhelpful errors, before


@pytest.mark.parametrize(
    ("value", "received"),
    [
        ("0.1", "str '0.1'"),
        ([0.1], r"list \[0\.1\]"),
        (None, "NoneType None"),
        (0.1 + 0.2j, r"complex \(0\.1\+0\.2j\)"),
        (jnp.asarray(0.1 + 0.2j), ".*of dtype complex"),
        ({"lr": 0.1}, "dict"),
    ],
)
def test_learning_rates_and_momenta_of_the_wrong_type(value, received):
    with pytest.raises(TypeError, match=f"learning_rate must be a real number.*got {received}"):
        sgdx.sgd(value)
    if value is not None:  # None is optax's "no momentum"
        with pytest.raises(TypeError, match=f"momentum must be a real number.*got {received}"):
            sgdx.sgd(0.1, momentum=value)
    with pytest.raises(TypeError, match=f"dampening must be a real number.*got {received}"):
        sgdx.sgd(0.1, 0.9, dampening=value)


def test_an_optax_state_passed_to_sgdx_says_whose_it_is():
    optax = pytest.importorskip("optax")
    tx = sgdx.trace(0.9)
    with pytest.raises(TypeError, match=r"expected sgdx's TraceState, got optax.*TraceState"):
        tx.update(GRADS, optax.trace(0.9).init(PARAMS))
    with pytest.raises(TypeError, match=r"expected sgdx's SGDState.*holds optax.*TraceState"):
        sgdx.sgd(0.1, 0.9).update(GRADS, optax.sgd(0.1, 0.9).init(PARAMS), PARAMS)


@pytest.mark.parametrize(
    "groups",
    [
        [{"params": ["w"], "lr": 0.1}, {"params": ["b"]}],
        ({"learning_rate": 0.1},),
        "head",
    ],
)
def test_torch_style_param_groups_get_the_sgdx_form(groups):
    with pytest.raises(TypeError, match="groups must map each label"):
        sgdx.param_groups({"w": "head", "b": "body"}, groups, learning_rate=0.1)


def test_group_config_of_the_wrong_type():
    with pytest.raises(TypeError, match="group 'head' must map"):
        sgdx.param_groups({"w": "head", "b": "head"}, {"head": 0.1}, learning_rate=0.1)


def test_a_state_from_differently_labelled_groups():
    params = {"w": jnp.ones(2), "b": jnp.ones(1)}
    ours = sgdx.param_groups({"w": "a", "b": "b"}, {"a": {}, "b": {}}, learning_rate=0.1)
    other = sgdx.param_groups({"w": "a", "b": "extra"}, {"a": {}, "extra": {}}, learning_rate=0.1)
    with pytest.raises(ValueError, match=r"state has groups \['a', 'extra'\].*\['a', 'b'\]"):
        ours.update(params, other.init(params), params)


def test_zero1_on_a_mesh_without_the_axis():
    mesh = jax.make_mesh((1,), ("batch",))
    shapes = jax.eval_shape(sgdx.sgd(0.1, 0.9).init, PARAMS)
    with pytest.raises(ValueError, match=r"no axis 'data'; its axes are \('batch',\)"):
        sgdx.sharding.zero1_state_sharding(shapes, mesh)
    with pytest.raises(ValueError, match="no axis 'model'"):
        sgdx.sharding.zero1_state_sharding(shapes, mesh, axis="model")


def run_cli_without(modules, *args):
    """``python -m sgdx ...`` in a process where ``modules`` cannot be imported."""
    code = textwrap.dedent(
        f"""
        import sys

        class NotInstalled:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {modules!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}")

        sys.meta_path.insert(0, NotInstalled())
        from sgdx.__main__ import main
        sys.exit(main({list(args)!r}))
        """
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("missing", [["torch"], ["sklearn"], ["torch", "sklearn"]])
def test_demo_without_its_extras_says_what_to_install(missing):
    result = run_cli_without(missing, "demo")
    assert result.returncode == 2
    assert "pip install 'sgdx[demo]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_compare_plot_without_matplotlib_fails_before_the_run(tmp_path):
    result = run_cli_without(["matplotlib"], "compare", "--steps", "100000", "--plot", "x.png")
    assert result.returncode == 2 and "pip install 'sgdx[cli]'" in result.stderr
    assert "step" not in result.stdout  # nothing ran


# ------------------------------------------------------------- round 3: never silent


def test_a_gradient_of_another_dtype_is_refused_as_torch_refuses_it():
    params = {"w": jnp.ones(3, jnp.float32)}
    grads = {"w": jnp.full(3, 0.029, jnp.float16)}
    tx = sgdx.sgd(1.0, momentum=0.9)
    state = tx.init(params)
    message = r"gradient at \['w'\] has dtype float16 but its parameter has dtype float32"
    for run in (
        lambda: sgdx.step(tx, params, grads, state),
        lambda: jax.jit(sgdx.step, static_argnums=0)(tx, params, grads, state),
        lambda: tx.update(grads, state, params),
    ):
        with pytest.raises(TypeError, match=message):
            run()
    torch = pytest.importorskip("torch")
    p = torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="The gradient must match the tensor's grad_dtype"):
        p.grad = torch.full((3,), 0.029, dtype=torch.float16)


def test_constant_lr_with_no_iterations_is_torchs():
    torch = pytest.importorskip("torch")
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=1.0)
    scheduler = torch.optim.lr_scheduler.ConstantLR(opt, factor=0.5, total_iters=0)
    expected = []
    for _ in range(5):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    schedule = sgdx.schedules.constant_lr(1.0, 0.5, total_iters=0)
    assert [float(schedule(t)) for t in range(5)] == expected == [0.5] * 5


def test_one_cycle_at_its_end_is_torchs_and_then_holds():
    torch = pytest.importorskip("torch")
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=1.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=10)
    expected = []
    for _ in range(11):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        if len(expected) < 11:
            scheduler.step()
    with pytest.raises(ValueError, match="Tried to step 11 times"):
        scheduler.step()
    schedule = sgdx.schedules.one_cycle_lr(0.1, total_steps=10)
    np.testing.assert_allclose([float(schedule(t)) for t in range(11)], expected, rtol=1e-12)
    jitted = jax.jit(schedule)
    assert all(float(jitted(t)) == float(schedule(9)) for t in (11, 12, 10_000))


@pytest.mark.parametrize(
    "dtype", [jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64, jnp.float8_e4m3fn]
)
def test_zero_d_hyperparameters_of_every_real_floating_dtype(dtype):
    value = jnp.asarray(0.5, dtype)
    tx = sgdx.sgd(value, momentum=value, dampening=jnp.asarray(0, dtype), weight_decay=value)
    params = {"w": jnp.ones(2)}
    updates, _ = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.5 * 1.5)  # -lr * (g + wd * p)


def test_optax_inject_hyperparams_of_sgdx_with_bfloat16_parameters_in_jit():
    optax = pytest.importorskip("optax")
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    tx = optax.inject_hyperparams(sgdx.sgd)(learning_rate=0.5, momentum=0.95)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(params, state, params)
        return optax.apply_updates(params, updates), state

    new, _ = step(params, tx.init(params))
    assert new["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(new["w"], np.float32), 0.5)


def test_inject_hyperparams_static_args_and_hyperparam_dtype():
    params = jnp.ones(2)
    tx = sgdx.inject_hyperparams(sgdx.sgd, static_args="momentum", hyperparam_dtype=jnp.float32)(
        0.5, momentum=0.9
    )
    state = tx.init(params)
    assert set(state.hyperparams) == {"learning_rate", "dampening"}
    assert all(v.dtype == jnp.float32 for v in state.hyperparams.values())
    # a callable named in static_args reaches the factory as it is, unevaluated
    schedule = sgdx.inject_hyperparams(sgdx.sgd, static_args=("learning_rate",))(
        lambda count: jnp.where(count < 1, 0.5, 0.25)
    )
    state = schedule.init(params)
    assert "learning_rate" not in state.hyperparams
    for expected in (-0.5, -0.25):
        updates, state = schedule.update(jnp.ones(2), state, params)
        np.testing.assert_allclose(updates, expected)
    with pytest.raises(ValueError, match=r"static_args \['lr'\] must name arguments of sgd"):
        sgdx.inject_hyperparams(sgdx.sgd, static_args="lr")
    with pytest.raises(TypeError, match="hyperparam_dtype must be a real floating dtype"):
        sgdx.inject_hyperparams(sgdx.sgd, hyperparam_dtype=jnp.int32)


def test_torchs_lr_spelling_gets_a_hint():
    with pytest.raises(TypeError, match="torch's lr is called learning_rate here"):
        sgdx.inject_hyperparams(sgdx.sgd)(lr=0.1)


def test_a_learning_rate_array_gets_torchs_message():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"^Tensor lr must be 1-element$"):
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=torch.tensor([1e-3, 1e-3]))
    with pytest.raises(ValueError, match=r"^Tensor lr must be 1-element: "):
        sgdx.sgd(jnp.array([1e-3, 1e-3]))


def test_interop_without_torch_names_the_extra():
    code = textwrap.dedent(
        """
        import sys

        class NotInstalled:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "torch":
                    raise ModuleNotFoundError(f"No module named {name!r}")

        sys.meta_path.insert(0, NotInstalled())
        import jax.numpy as jnp
        import sgdx
        from sgdx.interop import torch as interop

        tx = sgdx.inject_hyperparams(sgdx.sgd)(0.1, momentum=0.9)
        params = {"w": jnp.ones(2)}
        try:
            interop.state_dict(tx.init(params), params, ["w"], nesterov=False, maximize=False)
        except ModuleNotFoundError as error:
            print(error)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install 'sgdx[torch]'" in result.stdout, result.stderr[-2000:]


def test_plateau_metrics_as_torch_reads_them():
    tx = sgdx.inject_hyperparams(sgdx.sgd)(0.1)
    opt_state = tx.init(jnp.zeros(1))
    plateau = sgdx.reduce_lr_on_plateau()
    state, _ = plateau.step(plateau.init(), opt_state, "0.5")  # torch's float("0.5")
    assert float(state.best) == 0.5
    with pytest.raises(TypeError, match=r"metric must be a real number .* got NoneType"):
        plateau.step(plateau.init(), opt_state, None)
    with pytest.raises(ValueError, match="the metric 'low' is not a number"):
        plateau.step(plateau.init(), opt_state, "low")
    with pytest.raises(ValueError, match=r"metric must be a scalar, got shape \(2,\)"):
        plateau.step(plateau.init(), opt_state, jnp.ones(2))
    with pytest.raises(TypeError, match="factor must be a concrete number"):
        jax.jit(lambda factor: sgdx.reduce_lr_on_plateau(factor=factor))(0.5)


def test_an_unhashable_group_label_names_the_parameter():
    tx = sgdx.param_groups(
        lambda p: jax.tree.map(lambda _: {"head"}, p), {"head": {}}, learning_rate=0.1
    )
    with pytest.raises(TypeError, match=r"parameter at \['b'\] has label \{'head'\} \(set\)"):
        tx.init(PARAMS)


def test_a_momentum_schedule_of_the_wrong_shape_is_called_a_momentum_schedule():
    with pytest.raises(ValueError, match=r"The momentum schedule returned .* shape \(2,\)"):
        sgdx.inject_hyperparams(sgdx.sgd)(0.1, momentum=lambda count: jnp.ones(2))


def test_conventions_given_an_injected_state_say_what_to_convert():
    tx = sgdx.inject_hyperparams(sgdx.sgd)(0.1, momentum=0.9)
    state = tx.init(PARAMS)
    with pytest.raises(TypeError, match=r"got an InjectHyperparamsState: convert .*inner_state"):
        sgdx.conventions.pytorch_to_sutskever(state, 0.1)
    converted = sgdx.conventions.pytorch_to_sutskever(
        state.inner_state, state.hyperparams["learning_rate"]
    )
    assert isinstance(converted.momentum, sgdx.SutskeverTraceState)


# ---------------------------------------- torch's messages, trees, states

# (kwargs for sgd and torch.optim.SGD, message); torch raises the same ValueError.
ERROR_CONFIGS = [
    ({"lr": -0.1}, "Invalid learning rate: -0.1"),
    ({"lr": 1e-2, "momentum": -0.5}, "Invalid momentum value: -0.5"),
    ({"lr": 1e-2, "weight_decay": -1}, "Invalid weight_decay value: -1"),
    ({"lr": 1e-2, "nesterov": True}, "Nesterov momentum requires a momentum and zero dampening"),
    (
        {"lr": 1e-2, "momentum": 0.9, "dampening": 0.1, "nesterov": True},
        "Nesterov momentum requires a momentum and zero dampening",
    ),
]


def sgd_from_torch_kwargs(kwargs):
    kwargs = dict(kwargs)
    return sgdx.sgd(kwargs.pop("lr"), **kwargs)


@pytest.mark.parametrize(("kwargs", "message"), ERROR_CONFIGS)
def test_invalid_hyperparameters_raise_torch_message(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        sgd_from_torch_kwargs(kwargs)


@pytest.mark.parametrize(("kwargs", "message"), ERROR_CONFIGS)
def test_torch_raises_the_same_message(kwargs, message):
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], **kwargs)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: sgdx.sgd(0.1, convention="keras"), "Unknown convention 'keras'"),
        (
            lambda: sgdx.sgd(jnp.ones(3)),
            r"Tensor lr must be 1-element: learning_rate is an array of shape \(3,\)",
        ),
        (lambda: sgdx.sgd(jnp.asarray(-0.5)), "Invalid learning rate: -0.5"),
        (lambda: sgdx.sgd(0.1, momentum=jnp.asarray(-0.5)), "Invalid momentum value: -0.5"),
        (
            lambda: sgdx.sgd(0.1, 0.9, convention="sutskever", nesterov=True, dampening=0.5),
            "Nesterov momentum requires",
        ),
        (lambda: sgdx.trace(-0.1), "Invalid momentum value: -0.1"),
        (lambda: sgdx.add_decayed_weights(-2), "Invalid weight_decay value: -2"),
        (lambda: sgdx.scale_by_learning_rate(-1.0), "Invalid learning rate: -1.0"),
        (lambda: sgdx.sutskever_trace(-1.0, 0.9), "Invalid learning rate: -1.0"),
    ],
)
def test_invalid_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_unknown_keyword_argument_is_rejected():
    with pytest.raises(TypeError, match="lr"):
        sgdx.sgd(lr=0.1)  # torch's name; sgdx follows optax: learning_rate


def test_schedule_returning_non_scalar():
    tx = sgdx.sgd(lambda count: jnp.ones(2))
    with pytest.raises(ValueError, match="schedule must return a scalar"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def test_weight_decay_without_params():
    tx = sgdx.sgd(0.1, weight_decay=1e-4)
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def test_gradient_tree_mismatch_names_the_path():
    params = {"encoder": {"w": jnp.ones(2), "b": jnp.ones(2)}}
    tx = sgdx.sgd(0.1, momentum=0.9)
    grads = {"encoder": {"w": jnp.ones(2), "bias": jnp.ones(2)}}
    with pytest.raises(ValueError, match=r"\['encoder'\]\['bias'\].*\['encoder'\]\['b'\]"):
        tx.update(grads, tx.init(params), params)


def test_gradient_shape_mismatch_names_the_path():
    params = {"w": jnp.ones((2, 3))}
    tx = sgdx.sgd(0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"\['w'\] has shape \(3, 2\).*\(2, 3\)"):
        tx.update({"w": jnp.ones((3, 2))}, tx.init(params), params)


def test_integer_parameters_are_rejected_at_init():
    with pytest.raises(TypeError, match=r"\['step'\] has dtype int32"):
        sgdx.sgd(0.1).init({"w": jnp.ones(2), "step": jnp.zeros((), jnp.int32)})


def test_integer_gradients_are_rejected():
    tx = sgdx.sgd(0.1)
    with pytest.raises(TypeError, match=r"update at \['w'\] has dtype int32"):
        tx.update({"w": jnp.ones(2, jnp.int32)}, tx.init({"w": jnp.ones(2)}))


def test_state_from_another_configuration():
    params = jnp.ones(2)
    with_momentum = sgdx.sgd(0.1, momentum=0.9)
    plain = sgdx.sgd(0.1)
    with pytest.raises(ValueError, match="has a 'momentum' state, which this sgd"):
        plain.update(params, with_momentum.init(params))
    sutskever = sgdx.sgd(0.1, 0.9, convention="sutskever").init(params)
    nesterov = sgdx.sgd(0.1, 0.9, nesterov=True, weight_decay=0.1)
    with pytest.raises(TypeError, match="trace: expected sgdx's TraceState"):
        nesterov.update(params, sutskever._replace(learning_rate=sgdx.EmptyState()), params)


def test_errors_raise_at_trace_time_under_jit():
    tx = sgdx.sgd(0.1, momentum=0.9)
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"\['w'\]"):
        jax.jit(tx.update)({"w": jnp.ones(3)}, tx.init(params), params)


# ---- generated invalid input: always a clear ValueError/TypeError, never a crash or a result ----


@given(
    name=st.sampled_from(["learning_rate", "momentum", "weight_decay"]),
    value=st.floats(-1e3, -1e-6),
    as_array=st.booleans(),
)
def test_generated_negative_hyperparameters_raise_torch_messages(name, value, as_array):
    messages = {
        "learning_rate": "Invalid learning rate",
        "momentum": "Invalid momentum value",
        "weight_decay": "Invalid weight_decay value",
    }
    kwargs = {"learning_rate": 0.1, name: jnp.asarray(value) if as_array else value}
    with pytest.raises(ValueError, match=f"^{messages[name]}: "):
        sgdx.sgd(**kwargs)


@given(
    mutation=st.sampled_from(["extra", "missing", "shape", "int", "rank"]),
    momentum=st.sampled_from([0.0, 0.9]),
    weight_decay=st.sampled_from([0.0, 0.1]),
)
def test_generated_bad_gradients_raise_naming_the_path(mutation, momentum, weight_decay):
    params = {"layer": {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}}
    grads = {"layer": {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}}
    if mutation == "extra":
        grads["layer"]["c"] = jnp.ones(1)
    elif mutation == "missing":
        del grads["layer"]["b"]
    elif mutation == "shape":
        grads["layer"]["b"] = jnp.ones(4)
    elif mutation == "int":
        grads["layer"]["b"] = jnp.ones(3, jnp.int32)
    else:
        grads["layer"]["w"] = jnp.ones((2, 3, 1))
    tx = sgdx.sgd(0.1, momentum, weight_decay=weight_decay)
    state = tx.init(params)
    with pytest.raises((ValueError, TypeError), match=re.escape("['layer']")):
        jax.jit(tx.update)(grads, state, params)


# ------------------------------------------------------------------ the property oracle

WEIRD = st.one_of(
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.lists(st.floats(allow_nan=False), max_size=2),
    st.complex_numbers(allow_nan=False, allow_infinity=False, max_magnitude=2),
    st.floats(),  # NaN, inf, negatives, huge
    st.integers(-3, 3),
    st.sampled_from(
        [
            jnp.asarray(True),
            jnp.ones(2),
            jnp.asarray(-0.5),
            jnp.asarray(0.5, jnp.float32),
            jnp.asarray(1 + 1j),
            np.float32(0.3),
            jnp.asarray(3, jnp.int32),
            object(),
            lambda count: 0.1,
            jnp.float32,
            # 0-d arrays and numpy scalars of every kind of dtype
            jnp.asarray(0.5, jnp.bfloat16),
            jnp.asarray(0.5, jnp.float16),
            jnp.asarray(-0.5, jnp.bfloat16),
            jnp.asarray(2, jnp.int8),
            jnp.asarray(2, jnp.uint8),
            jnp.asarray(0.5, jnp.complex64),
            np.float16(0.25),
            np.int64(1),
            np.asarray([0.5], np.float32),
            np.asarray("0.5"),
        ]
    ),
)

# every public factory, with its arguments and a valid value for each
FACTORIES = {
    "sgd": (
        sgdx.sgd,
        {
            "learning_rate": 0.1,
            "momentum": 0.9,
            "dampening": 0.0,
            "weight_decay": 1e-3,
            "nesterov": False,
            "maximize": False,
            "convention": "pytorch",
            "decoupled_weight_decay": False,
            "momentum_correction": False,
            "accumulator_dtype": None,
        },
    ),
    "trace": (sgdx.trace, {"momentum": 0.9, "dampening": 0.0, "nesterov": False}),
    "sutskever_trace": (sgdx.sutskever_trace, {"learning_rate": 0.1, "momentum": 0.9}),
    "scale_by_learning_rate": (sgdx.scale_by_learning_rate, {"learning_rate": 0.1}),
    "add_decayed_weights": (sgdx.add_decayed_weights, {"weight_decay": 0.1}),
    "add_decoupled_weight_decay": (
        sgdx.add_decoupled_weight_decay,
        {"weight_decay": 0.1, "learning_rate": 0.1},
    ),
    "inject_sgd": (sgdx.inject_hyperparams(sgdx.sgd), {"learning_rate": 0.1, "momentum": 0.9}),
    "skip_nonfinite": (
        lambda grad_scale: sgdx.skip_nonfinite(sgdx.sgd(0.1), grad_scale=grad_scale),
        {"grad_scale": 2.0},
    ),
    "reduce_lr_on_plateau": (
        lambda **kw: sgdx.reduce_lr_on_plateau(**kw),
        {"factor": 0.5, "patience": 2, "threshold": 1e-4, "cooldown": 0},
    ),
    "step_lr": (sgdx.schedules.step_lr, {"base_lr": 0.1, "step_size": 2, "gamma": 0.5}),
    "cosine_annealing_lr": (sgdx.schedules.cosine_annealing_lr, {"base_lr": 0.1, "t_max": 10}),
    "warmup": (
        lambda warmup_steps, warmup_factor: sgdx.schedules.warmup(
            sgdx.schedules.exponential_lr(0.1, 0.9), warmup_steps, warmup_factor
        ),
        {"warmup_steps": 3, "warmup_factor": 0.1},
    ),
}


def _from_sgdx(error: BaseException) -> bool:
    """Raised by sgdx's own code (the innermost frame of the traceback is in sgdx/), with a
    message longer than a bare exception."""
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    own = [f for f in frames if "/sgdx/" in f.replace("\\", "/")]
    return bool(own) and "/sgdx/" in frames[-1].replace("\\", "/") and len(str(error)) > 20


def _exercise(name, tx_or_schedule):
    """Use what was built: a transform runs two updates (checked against the reference
    formula where torch's result is defined), a schedule is evaluated, the plateau steps."""
    if name == "reduce_lr_on_plateau":
        opt = sgdx.inject_hyperparams(sgdx.sgd)(0.1)
        tx_or_schedule.step(tx_or_schedule.init(), opt.init(PARAMS), 1.0)
        return
    if callable(tx_or_schedule) and not hasattr(tx_or_schedule, "init"):
        value = tx_or_schedule(jnp.asarray(3, jnp.int32))
        assert jnp.shape(value) == ()
        return
    state = tx_or_schedule.init(PARAMS)
    for _ in range(2):
        updates, state = tx_or_schedule.update(GRADS, state, PARAMS)
    for leaf in jax.tree.leaves(updates):
        assert leaf.dtype in (jnp.float32, jnp.float64)


@settings(deadline=None)
@given(
    name=st.sampled_from(sorted(FACTORIES)),
    data=st.data(),
)
def test_generated_bad_arguments_are_accepted_or_refused_by_sgdx(name, data):
    factory, valid = FACTORIES[name]
    argument = data.draw(st.sampled_from(sorted(valid)), label="argument")
    value = data.draw(WEIRD, label="value")
    kwargs = {**valid, argument: value}
    if name == "sgd" and kwargs.get("nesterov") is True:
        kwargs["dampening"] = 0.0
    try:
        built = factory(**kwargs)
        _exercise(name, built)
    except (TypeError, ValueError) as error:
        assert _from_sgdx(error), f"{type(error).__name__} not from sgdx: {error}"
        assert argument in str(error) or _names_the_problem(error), str(error)
        return
    # accepted: it must have been a value torch accepts too
    _assert_torch_would_accept(name, argument, value)


def _names_the_problem(error):
    text = str(error)
    return any(
        word in text
        for word in ("Invalid", "must be", "Nesterov", "expected", "Factor", "convention", "Tried")
    )


def _assert_torch_would_accept(name, argument, value):
    """An accepted value is a number of the right kind (or None where None means off)."""
    if value is None:
        assert argument in ("momentum", "weight_decay", "accumulator_dtype", "grad_scale"), (
            name,
            argument,
        )
        return
    if argument in ("nesterov", "maximize", "decoupled_weight_decay", "momentum_correction"):
        assert isinstance(value, bool), (name, argument, value)
        return
    if argument == "accumulator_dtype":
        assert jnp.issubdtype(np.dtype(value), jnp.inexact)
        return
    if callable(value) and (argument == "learning_rate" or name == "inject_sgd"):
        return  # a schedule: inject_hyperparams takes one for every numeric hyperparameter
    if argument == "convention":
        assert value in ("pytorch", "sutskever")
        return
    assert not isinstance(value, bool | str | list | complex), (name, argument, value)
    if "learning_rate" in argument and np.size(value) == 1:
        return  # torch takes a one-element tensor as its lr too
    assert jnp.ndim(value) == 0 and not jnp.iscomplexobj(value), (name, argument, value)


GRADIENT_LEAVES = st.sampled_from(
    [
        ("float32 array", lambda p: jnp.full_like(p, 0.5)),
        ("float64 array", lambda p: jnp.full(p.shape, 0.5, jnp.float64)),
        ("float16 array", lambda p: jnp.full(p.shape, 0.5, jnp.float16)),
        ("bfloat16 array", lambda p: jnp.full(p.shape, 0.5, jnp.bfloat16)),
        ("int32 array", lambda p: jnp.ones(p.shape, jnp.int32)),
        ("bool array", lambda p: jnp.ones(p.shape, jnp.bool_)),
        ("complex64 array", lambda p: jnp.full(p.shape, 0.5 + 0.5j, jnp.complex64)),
        ("numpy float32", lambda p: np.full(p.shape, 0.5, np.float32)),
        ("wrong shape", lambda p: jnp.full((*p.shape, 2), 0.5, p.dtype)),
        ("None", lambda p: None),
        ("string", lambda p: "0.5"),
    ]
)


@settings(deadline=None)
@given(
    leaves=st.tuples(GRADIENT_LEAVES, GRADIENT_LEAVES),
    momentum=st.sampled_from([None, 0.9]),
    weight_decay=st.sampled_from([None, 0.1]),
    entry=st.sampled_from(["update", "step", "jit step"]),
)
def test_generated_gradients_of_every_type_and_dtype(leaves, momentum, weight_decay, entry):
    """Gradients of every kind through every entry point: sgdx's clear error naming the path,
    or the reference result (the float32 update, where the gradient has the parameter's
    dtype or none), and the inputs unchanged either way."""
    params = {"w": jnp.ones(3, jnp.float32), "b": jnp.zeros(2, jnp.float32)}
    (w_kind, make_w), (b_kind, make_b) = leaves
    grads = {"w": make_w(params["w"]), "b": make_b(params["b"])}
    before = jax.tree.map(np.array, grads)
    tx = sgdx.sgd(0.1, momentum, weight_decay=weight_decay)
    state = tx.init(params)
    state_before = jax.tree.map(np.array, state)
    run = {
        "update": lambda: sgdx.apply_updates(params, tx.update(grads, state, params)[0]),
        "step": lambda: sgdx.step(tx, params, grads, state)[0],
        "jit step": lambda: jax.jit(sgdx.step, static_argnums=0)(tx, params, grads, state)[0],
    }[entry]
    fine = {"float32 array", "numpy float32", "None"}
    try:
        new = run()
    except (TypeError, ValueError) as error:
        assert _from_sgdx(error) or "jit" in entry, error
        assert {w_kind, b_kind} - fine, f"refused valid gradients: {error}"
        assert "['w']" in str(error) or "['b']" in str(error) or "structure" in str(error)
    else:
        assert {w_kind, b_kind} <= fine, f"accepted {w_kind}, {b_kind}"
        for name in params:
            g = grads[name]
            if g is None:
                np.testing.assert_array_equal(new[name], params[name])
                continue
            step = np.asarray(g, np.float32) + (weight_decay or 0.0) * np.asarray(params[name])
            np.testing.assert_allclose(new[name], np.asarray(params[name]) - 0.1 * step, rtol=1e-6)
    for name, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(np.asarray(grads[name]), value)
    jax.tree.map(np.testing.assert_array_equal, state, state_before)
