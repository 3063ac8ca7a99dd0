"""Misuse is never silent: each class of bad input gets a TypeError / ValueError from sgdx
that says what was received and what to do, and a failing call changes nothing.

The property test at the end generates ill-typed and out-of-range values for every public
factory's arguments and checks that each is either accepted (and then computes torch's
result) or rejected with such an error, never a crash inside jax and never a silent result.
"""

from __future__ import annotations

import math
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
    assert math.isnan(float(jax.jit(schedule)(11)))  # under jit it cannot raise: NaN
    tx = sgdx.sgd(schedule)
    decay, scale = tx.init(PARAMS)
    state = (decay, scale._replace(count=jnp.asarray(11, jnp.int32)))
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
        sgdx.sgd(0.1, 0.9, maximize=True),
        sgdx.sgd(0.1),
        sgdx.sgd(0.1, 0.9, convention="sutskever"),
    ],
    ids=["maximize", "no-momentum", "sutskever"],
)
def test_fused_step_refuses_a_state_of_another_configuration(other):
    params = {"w": jnp.ones(3, jnp.float32)}
    grads = {"w": jnp.ones(3, jnp.float32)}
    fused = sgdx.sgd(0.1, 0.9)
    with pytest.raises((TypeError, ValueError), match="expected"):
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
    with pytest.raises(ValueError, match="state tuple of 3 entries"):
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
    assert jnp.ndim(value) == 0 and not jnp.iscomplexobj(value), (name, argument, value)
