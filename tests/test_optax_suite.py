"""optax's own tests, re-run with sgdx transforms in place of optax's.

Each test below is ported from a test file that ships inside the installed optax package
(``optax/_src/alias_test.py``, ``optax/transforms/_combining_test.py``,
``optax/transforms/_masking_test.py``, ``optax/transforms/_accumulation_test.py``,
``optax/transforms/_conditionality_test.py``, ``optax/schedules/_inject_test.py``,
``optax/_src/update_test.py``, ``optax/_src/base_test.py``,
``optax/_src/sharding_test.py``), named after it, with optax's assertions kept. The
optimizer under test is sgdx's; the combinators around it are optax's (and sgdx.chain
where the test is about chaining).

Assertions changed, and why:
- alias_test ``test_explicit_dtype``: the buffer field is ``momentum_buffer``, not
  ``trace``.
- alias_test ``test_optimizers_can_be_wrapped_in_inject_hyperparams``: compared with
  ``rtol=1e-6`` instead of optax's 1e-3 (sgdx computes the same numbers either way).
- combining_test ``ExtraArgsTest``: the parameters are ``{'a': 1.0, 'b': 2.0}`` instead of
  the integers ``{'a': 1, 'b': 2}``: SGD updates floating parameters only, as torch does
  (sgdx raises a TypeError naming the integer leaf).
- masking_test ``_build_stateful_sgd``: optax spells "compute momentum terms that change
  nothing" as ``momentum=0.0``; in sgdx a Python 0 switches momentum off (torch's rule),
  and an array ``0`` keeps the buffer, so the port passes ``jnp.asarray(0.0)``.
- masking_test ``test_masked_state_structure``: the buffer is ``inner_state.momentum
  .momentum_buffer`` (sgd's state names its parts), not ``inner_state[0].trace``.
- Differences that torch's semantics require stay differences: sgdx's first buffer is the
  first gradient, undamped (optax's ``trace`` starts from zeros); no test here depends on
  it, and ``test_parity_torch.py`` checks it against torch.

optax is run under its own dtype promotion ("standard"; the rest of this suite runs with
"strict", which optax's combinators were not written for).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgdx

optax = pytest.importorskip("optax")
test_utils = pytest.importorskip("optax._src.test_utils")


@pytest.fixture(autouse=True)
def optax_dtype_promotion():
    with jax.numpy_dtype_promotion("standard"):
        yield


# The sgdx optimizers that stand in for optax's ``sgd`` entry of _OPTIMIZERS_UNDER_TEST,
# plus the options optax.sgd lacks.
OPTIMIZERS = {
    "sgd": (sgdx.sgd, {"learning_rate": 1e-3, "momentum": 0.9}),
    "sgd_nesterov_decay": (
        sgdx.sgd,
        {"learning_rate": 1e-3, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-6},
    ),
    "sgd_dampening": (sgdx.sgd, {"learning_rate": 1e-3, "momentum": 0.9, "dampening": 0.1}),
    "sgd_sutskever": (
        sgdx.sgd,
        {"learning_rate": 1e-3, "momentum": 0.9, "convention": "sutskever"},
    ),
    "sgd_plain": (sgdx.sgd, {"learning_rate": 1e-3}),
}


def _setup_parabola(dtype):
    initial_params = jnp.array([-1.0, 10.0, 1.0], dtype=dtype)
    final_params = jnp.array([1.0, -1.0, 1.0], dtype=dtype)
    if jnp.iscomplexobj(dtype):
        final_params *= 1 + 1j

    def objective(params):
        return jnp.sum(optax.tree.norm(params - final_params, squared=True))

    return initial_params, final_params, objective


def _setup_rosenbrock(dtype):
    a, b = 1.0, 100.0
    if jnp.iscomplexobj(dtype):
        a *= 1 + 1j
    initial_params = jnp.array([0.0, 0.0], dtype=dtype)
    final_params = jnp.array([a, a**2], dtype=dtype)

    def objective(params):
        return jnp.abs(a - params[0]) ** 2 + b * jnp.abs(params[1] - params[0] ** 2) ** 2

    return initial_params, final_params, objective


# ---------------------------------------------------------------- optax/_src/alias_test.py


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
@pytest.mark.parametrize("target", [_setup_parabola, _setup_rosenbrock])
@pytest.mark.parametrize("name", ["sgd", "sgd_nesterov_decay"])
def test_optimization(name, target, dtype):
    if name == "sgd_nesterov_decay" and target is _setup_rosenbrock and dtype == jnp.complex64:
        pytest.skip(
            "optax.sgd(1e-3, 0.9, nesterov=True) does not reach the complex Rosenbrock target "
            "in 10000 steps either; test_same_iterates_as_optax_sgd shows the iterates agree"
        )
    factory, kwargs = OPTIMIZERS[name]
    opt = factory(**kwargs)
    initial_params, final_params, objective = target(dtype)

    @jax.jit
    def step(params, state):
        updates = jax.grad(objective)(params)
        updates = jax.tree.map(lambda x: x.conj(), updates)
        updates, state = opt.update(updates, state, params)
        return optax.apply_updates(params, updates), state

    params, state = initial_params, opt.init(initial_params)
    state = optax.tree.map_params(opt, lambda v: v, state)  # a no-op change
    for it in range(10000):
        if it == 1:
            with test_utils.log_compilations() as compilation_logs:
                params, state = step(params, state)
            assert not compilation_logs, 'Optimizer recompiles on second call to "update".'
        else:
            params, state = step(params, state)
    test_utils.assert_trees_all_close(params, final_params, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
@pytest.mark.parametrize("nesterov", [False, True])
def test_same_iterates_as_optax_sgd(nesterov, dtype):
    """Where optax.sgd has the option (momentum, nesterov; no dampening), its iterates and
    sgdx's agree: optax's zero-initialised trace gives the first buffer g, torch's too."""
    initial_params, _, objective = _setup_rosenbrock(dtype)
    runs = []
    for opt in (
        optax.sgd(1e-3, momentum=0.9, nesterov=nesterov),
        sgdx.sgd(1e-3, momentum=0.9, nesterov=nesterov),
    ):

        @jax.jit
        def step(params, state, opt=opt):
            updates = jax.tree.map(jnp.conj, jax.grad(objective)(params))
            updates, state = opt.update(updates, state, params)
            return optax.apply_updates(params, updates), state

        params, state = initial_params, opt.init(initial_params)
        trajectory = []
        for _ in range(300):
            params, state = step(params, state)
            trajectory.append(params)
        runs.append(np.stack(trajectory))
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizers_accept_extra_args(name):
    factory, kwargs = OPTIMIZERS[name]
    opt = factory(**kwargs)  # intentionally no optax.with_extra_args_support
    initial_params, _, objective = _setup_rosenbrock(jnp.float32)

    @jax.jit
    def step(params, state):
        updates = jax.grad(objective)(params)
        update_kwargs = {"unexpected_extra_args_your_optimizer_doesnt_expect": 1}
        updates, state = opt.update(updates, state, params, **update_kwargs)
        return optax.apply_updates(params, updates), state

    params, state = initial_params, opt.init(initial_params)
    for _ in range(2):
        params, state = step(params, state)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizers_can_be_wrapped_in_inject_hyperparams(name):
    factory, kwargs = OPTIMIZERS[name]
    opt = factory(**kwargs)
    opt_inject = optax.inject_hyperparams(factory)(**kwargs)
    params = [jnp.negative(jnp.ones((2, 3))), jnp.ones((2, 5, 2))]
    grads = [jnp.ones((2, 3)), jnp.negative(jnp.ones((2, 5, 2)))]
    updates, new_state = jax.jit(opt.update)(grads, jax.jit(opt.init)(params), params)
    updates_inject, new_state_inject = jax.jit(opt_inject.update)(
        grads, jax.jit(opt_inject.init)(params), params
    )
    test_utils.assert_trees_all_close(updates_inject, updates, rtol=1e-6)
    test_utils.assert_trees_all_close(new_state_inject.inner_state, new_state, rtol=1e-6)


@pytest.mark.parametrize("state_dtype", ["bfloat16", "float32", "complex64", None])
@pytest.mark.parametrize("params_dtype", ["bfloat16", "float32", "complex64", None])
def test_explicit_dtype(params_dtype, state_dtype):
    opt = sgdx.sgd(0.1, momentum=0.9, accumulator_dtype=state_dtype)
    params_dtype = jax.dtypes.canonicalize_dtype(params_dtype)
    state = opt.init(jnp.array([0.0, 0.0], dtype=params_dtype))
    if state_dtype is None:
        expected_dtype = params_dtype
    else:
        expected_dtype = jax.dtypes.canonicalize_dtype(state_dtype)
    assert optax.tree.get(state, "momentum_buffer").dtype == expected_dtype


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_preserve_dtype(name, dtype):
    factory, kwargs = OPTIMIZERS[name]
    opt = factory(**kwargs)
    params = jnp.array([1.0, 2.0], dtype=jnp.dtype(dtype))
    grads = jax.grad(lambda x: jnp.sum(x**2))(params)
    updates, _ = jax.jit(opt.update)(grads, jax.jit(opt.init)(params), params)
    assert updates.dtype == grads.dtype


@pytest.mark.parametrize(
    "dtype",
    [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64, jnp.complex64, jnp.complex128],
)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_shape_dtype_shard_stability(name, dtype):
    factory, kwargs = OPTIMIZERS[name]
    opt = factory(**kwargs)
    initial_params, _, objective = _setup_parabola(dtype)

    @jax.jit
    def step(params, state):
        updates = jax.grad(objective)(params)
        updates = jax.tree.map(lambda x: x.conj(), updates)
        cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
        updates, state = jax.lax.cond(
            cond, lambda: opt.update(updates, state, params), lambda: (params, state)
        )
        return optax.apply_updates(params, updates), state

    params, state = initial_params, opt.init(initial_params)
    for _ in range(2):
        params, new_state = step(params, state)
        assert jax.tree.leaves(params)[0].dtype == dtype
        cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
        state = jax.lax.cond(cond, lambda: state, lambda: new_state)  # noqa: B023


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_gradient_accumulation(name, dtype):
    factory, kwargs = OPTIMIZERS[name]
    opt = optax.MultiSteps(factory(**kwargs), every_k_schedule=4)
    params = jnp.array([1.0, 2.0], dtype=jnp.dtype(dtype))
    grads = jax.grad(lambda x: jnp.sum(x**2))(params)
    updates, _ = jax.jit(opt.update)(grads, jax.jit(opt.init)(params), params)
    test_utils.assert_trees_all_equal(updates, jnp.zeros_like(grads))


# ------------------------------------------------------ optax/transforms/_combining_test.py


@pytest.mark.parametrize("chain", [optax.chain, sgdx.chain], ids=["optax.chain", "sgdx.chain"])
def test_chain(chain):
    """optax's test_chain, with sgdx's links (trace without momentum, the learning rate)."""
    init_params = (jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0]))
    per_step_updates = (jnp.array([500.0, 5.0]), jnp.array([300.0, 3.0]))
    transformations = [
        optax.scale_by_adam(),
        sgdx.trace(jnp.asarray(0.0)),
        sgdx.scale_by_learning_rate(1e-2),
    ]
    chained = chain(*transformations)
    chain_params, state = init_params, chained.init(init_params)
    assert isinstance(state, tuple)
    update_fn = jax.jit(chained.update)
    for _ in range(50):
        updates, state = update_fn(per_step_updates, state)
        assert isinstance(state, tuple)
        chain_params = optax.apply_updates(chain_params, updates)

    manual_params = init_params
    states = [t.init(manual_params) for t in transformations]
    for _ in range(50):
        updates, new_states = per_step_updates, []
        for t, s in zip(transformations, states, strict=True):
            updates, s = t.update(updates, s)
            new_states.append(s)
        manual_params = optax.apply_updates(manual_params, updates)
        states = new_states
    test_utils.assert_trees_all_close(manual_params, chain_params, rtol=1e-4)


def test_extra_args():
    def init_fn(params):
        del params
        return ()

    def update_fn(updates, state, params=None, *, loss, **extra_args):
        del extra_args, params
        assert loss == 1
        return updates, state

    t = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    for chain in (optax.chain, sgdx.chain):
        result = chain(sgdx.sgd(1e-3, momentum=0.9), t)
        assert isinstance(result, optax.GradientTransformationExtraArgs)
        params = {"a": 1.0, "b": 2.0}
        state = result.init(params)
        result.update(params, state, loss=1, ignored_kwarg="hi")


def test_extra_args_chaining():
    def init_fn(params):
        del params
        return {}

    def update_fn(updates, state, params=None):
        del params
        return updates, state

    t1 = optax.GradientTransformation(init_fn, update_fn)
    t2 = sgdx.chain(t1, t1)
    assert isinstance(t2, optax.GradientTransformation)
    assert isinstance(t2, optax.GradientTransformationExtraArgs)
    t3 = optax.with_extra_args_support(t2)
    assert isinstance(t3, optax.GradientTransformationExtraArgs)


def test_extra_args_positional_params():
    def init_fn(params):
        del params
        return ()

    def update_fn(updates, state, params=None):
        assert params is not None
        return updates, state

    t1 = optax.GradientTransformation(init_fn, update_fn)
    opt = sgdx.chain(t1, sgdx.sgd(0.1, weight_decay=0.1))
    params = {"a": jnp.ones(2), "b": jnp.ones(1)}
    state = opt.init(params)
    opt.update(params, state, params, ignored_kwarg="hi")
    opt.update(params, state, params=params, ignored_kwarg="hi")


def _map_keys_fn(fn):
    def map_fn(nested_dict):
        return {k: map_fn(v) if isinstance(v, dict) else fn(k, v) for k, v in nested_dict.items()}

    return map_fn


@pytest.mark.parametrize("use_fn", [True, False])
def test_partition(use_fn):
    params = {"a1": 1.0, "b1": 2.0, "z1": {"a2": 3.0, "z2": {"c1": 4.0}}}
    params = jax.tree.map(jnp.asarray, params)
    input_updates = jax.tree.map(lambda x: x / 10.0, params)
    tx_dict = {
        "a": sgdx.sgd(1.0),
        "b": sgdx.identity(),
        "c": sgdx.sgd(2.0, momentum=0.9),  # stateful
    }
    param_labels = _map_keys_fn(lambda k, _: k[0])
    if not use_fn:
        param_labels = param_labels(params)
    tx = optax.partition(tx_dict, param_labels)
    update_fn = jax.jit(tx.update)
    state = jax.jit(tx.init)(params)
    # sgd(1.0) negates, identity keeps, sgd(2.0, momentum) scales the first gradient (its
    # buffer) by -2 (optax's scale(-1), ema(0) and scale(2), up to the sign of "c")
    updates, state = update_fn(input_updates, state, params)
    correct_update_fn = _map_keys_fn(lambda k, v: {"a": -v, "b": v, "c": -2.0 * v}[k[0]])
    correct_updates = correct_update_fn(input_updates)
    test_utils.assert_trees_all_close(updates, correct_updates)
    # Check repeated application, this time with no params ("c" now carries momentum:
    # -2 * (0.9 * buf + g))
    updates, _ = update_fn(correct_updates, state)
    expected = _map_keys_fn(lambda k, v: {"a": -v, "b": v, "c": -2.0 * (0.9 * v / -2.0 + v)}[k[0]])(
        correct_updates
    )
    test_utils.assert_trees_all_close(updates, expected)


@pytest.mark.parametrize("container", [list, tuple, dict])
def test_partition_empty(container):
    init_fn, update_fn = optax.partition({0: sgdx.sgd(1.0, momentum=0.9)}, lambda _: 0)
    updates, _ = update_fn(container(), init_fn(container()))
    assert updates == container()


def test_partition_label_without_parameters():
    """A label that owns no parameter: its sgdx transform sees an all-masked tree."""
    params = {"w": jnp.ones(2), "b": jnp.ones(1)}
    tx = optax.partition(
        {"decay": sgdx.sgd(0.1, 0.9, weight_decay=0.1), "unused": sgdx.sgd(0.1, 0.9)},
        {"w": "decay", "b": "decay"},
    )
    state = tx.init(params)
    updates, _ = tx.update(params, state, params)
    expected, _ = sgdx.sgd(0.1, 0.9, weight_decay=0.1).update(
        params, sgdx.sgd(0.1, 0.9, weight_decay=0.1).init(params), params
    )
    test_utils.assert_trees_all_close(updates, expected)


@pytest.mark.parametrize(
    ("use_extra_label", "use_fn"), [(False, False), (False, True), (True, False), (True, True)]
)
def test_labels_mismatch(use_extra_label, use_fn):
    params = {"a": 1.0, "b": [2.0, 3.0], "c": {"d": 4.0, "e": (5.0, 6.0)}}
    params = jax.tree.map(jnp.asarray, params)
    label_tree = {"a": 0, "b": [1, 0], "c": 1}
    if use_extra_label:
        label_tree["a"] = 3
    transforms = {0: sgdx.sgd(1.0), 1: sgdx.sgd(1.0, momentum=0.9), 2: sgdx.trace(1.0)}
    init_fn, update_fn = optax.partition(
        transforms, (lambda _: label_tree) if use_fn else label_tree
    )
    if use_extra_label:
        with pytest.raises(ValueError):
            jax.jit(init_fn)(params)
    else:
        state = jax.jit(init_fn)(params)
        jax.jit(update_fn)(jax.tree.map(lambda x: x / 10.0, params), state)


def test_named_chain():
    def scale_by_loss():
        def update_fn(updates, state, params, *, loss, **extra_args):
            del params, extra_args
            return jax.tree.map(lambda u: u / loss, updates), state

        return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)

    tx = optax.named_chain(("sgd", sgdx.sgd(0.1, maximize=True)), ("scale_loss", scale_by_loss()))
    params = {"a": jnp.ones((4,))}
    updates, _ = tx.update(params, tx.init(params), params, loss=0.1)
    test_utils.assert_trees_all_close(updates, {"a": jnp.ones((4,))})


# -------------------------------------------------------- optax/transforms/_masking_test.py


def _build_sgd():
    return sgdx.sgd(1.0)


def _build_stateful_sgd():
    return sgdx.sgd(1.0, momentum=jnp.asarray(0.0))


@pytest.mark.parametrize("use_fn", [False, True])
@pytest.mark.parametrize("opt_builder", [_build_sgd, _build_stateful_sgd])
def test_masked(opt_builder, use_fn):
    mask = {"a": True, "b": [False, True], "c": {"d": True, "e": (False, True)}}
    mask_arg = (lambda _: mask) if use_fn else mask
    params = {"a": 1.0, "b": [2.0, 3.0], "c": {"d": 4.0, "e": (5.0, 6.0)}}
    params = jax.tree.map(jnp.asarray, params)
    input_updates = jax.tree.map(lambda x: x / 10.0, params)

    def masked_negate(updates):
        return jax.tree.map(lambda upd, m: -upd if m else upd, updates, mask)

    init_fn, update_fn = optax.masked(opt_builder(), mask_arg)
    update_fn = jax.jit(update_fn)
    state = jax.jit(init_fn)(params)
    result = optax.tree.map_params(init_fn, lambda v: v, state)
    test_utils.assert_trees_all_equal_structs(result, state)
    updates, state = update_fn(input_updates, state, params)
    correct_updates = masked_negate(input_updates)
    test_utils.assert_trees_all_close(updates, correct_updates)
    correct_updates = masked_negate(correct_updates)
    updates, _ = update_fn(updates, state)
    test_utils.assert_trees_all_close(updates, correct_updates)


@pytest.mark.parametrize("opt_builder", [_build_sgd, _build_stateful_sgd])
def test_prefix_mask(opt_builder):
    mask = {"a": True, "b": False, "c": {"d": False, "e": True}}
    params = {"a": 1.0, "b": {"f": 2.0}, "c": {"d": 3.0, "e": ([4.0, 5.0], 6.0)}}
    params = jax.tree.map(jnp.asarray, params)
    input_updates = jax.tree.map(lambda x: x / 10.0, params)

    def _masked_sgd_on_updates(m, upd):
        return jax.tree.map(lambda x: -x, upd) if m else upd

    init_fn, update_fn = optax.masked(opt_builder(), mask)
    update_fn = jax.jit(update_fn)
    state = jax.jit(init_fn)(params)
    updates, state = update_fn(input_updates, state, params)
    correct = jax.tree.map(_masked_sgd_on_updates, mask, input_updates)
    test_utils.assert_trees_all_close(updates, correct)
    correct = jax.tree.map(_masked_sgd_on_updates, mask, correct)
    updates, _ = update_fn(updates, state)
    test_utils.assert_trees_all_close(updates, correct)


def test_masked_everything_masked_out():
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    tx = optax.masked(sgdx.sgd(0.1, momentum=0.9, weight_decay=0.1), {"a": False, "b": False})
    updates, _ = tx.update(params, tx.init(params), params)
    test_utils.assert_trees_all_equal(updates, params)


@pytest.mark.parametrize("container", [list, tuple, dict])
def test_masked_empty(container):
    init_fn, update_fn = optax.masked(_build_sgd(), container())
    update_fn(container(), init_fn(container()))


def test_masked_state_structure():
    params = {
        "a": [jnp.ones(1), (jnp.ones(2), jnp.ones(3))],
        "b": {"c": jnp.ones(4), "d": jnp.ones(5)},
    }
    mask = {"a": [True, (True, False)], "b": False}
    tx = optax.masked(_build_stateful_sgd(), mask)
    buffers = jax.jit(tx.init)(params).inner_state.momentum.momentum_buffer
    expected = {
        "a": [jnp.zeros(1), (jnp.zeros(2), optax.MaskedNode())],
        "b": optax.MaskedNode(),
    }
    test_utils.assert_trees_all_equal_structs(buffers, expected)


# --------------------------------------------------- optax/transforms/_accumulation_test.py


def test_multi_steps():
    """A non-trivial inner optimizer: sgdx's, stateful, needing the params (weight decay)."""
    k_steps = 4
    data = jnp.ones([32, 7])
    params = {"w": jnp.linspace(-1.0, 1.0, 7 * 3).reshape(7, 3), "b": jnp.zeros(3)}

    def loss_apply(params, data):
        return jnp.mean((data @ params["w"] + params["b"][None]) ** 2)

    ms_opt = optax.MultiSteps(sgdx.sgd(1e-2, momentum=0.9, weight_decay=1e-2), k_steps)
    opt_init, opt_update = ms_opt.gradient_transformation()

    def train_step(data, opt_state, params):
        return opt_update(jax.grad(loss_apply)(params, data), opt_state, params)

    opt_state = opt_init(params)
    prev_loss = loss_apply(params, data)
    for idx in range(5 * k_steps):
        updates, opt_state = jax.jit(train_step)(data, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        new_loss = loss_apply(new_params, data)
        if idx % k_steps < k_steps - 1:
            jax.tree.map(np.testing.assert_array_equal, new_params, params)
            np.testing.assert_equal(new_loss, prev_loss)
            assert not ms_opt.has_updated(opt_state)
        else:
            np.testing.assert_array_less(new_loss, prev_loss)
            prev_loss = new_loss
            assert ms_opt.has_updated(opt_state)
        params = new_params


def _count_extra_args():
    """An sgdx transform that reads an extra argument (as a metric-fed transform would)."""

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        return updates, state + jnp.asarray(value)

    return sgdx.GradientTransformation(lambda params: jnp.zeros(()), update_fn)


def test_multi_steps_passes_extra_args_to_sgdx():
    """MultiSteps and optax.chain hand their extra arguments to sgdx transforms (optax drops
    them for a transform it does not recognise as taking them)."""
    tx = optax.MultiSteps(optax.chain(sgdx.sgd(0.1), _count_extra_args()), every_k_schedule=1)
    params = jnp.ones(2)
    state = tx.init(params)
    for loss in (1.0, 2.0, 2.0):
        _, state = tx.update(jnp.ones(2), state, params, value=loss)
    _, counted = state.inner_opt_state
    assert float(counted) == 5.0


# ------------------------------------------------- optax/transforms/_conditionality_test.py


def _build_sgd_extra_args():
    return sgdx.chain(sgdx.sgd(1.0), sgdx.identity())


@pytest.mark.parametrize("opt_builder", [_build_sgd, _build_stateful_sgd, _build_sgd_extra_args])
def test_apply_if_finite(opt_builder):
    one, nan = jnp.array(1.0), jnp.array(jnp.nan)
    params = jnp.array(0.0)
    opt = optax.apply_if_finite(opt_builder(), 2)
    state = opt.init(params)
    grads_fn = jax.grad(jax.jit(lambda p, x: p * x))

    def step(params, state, x):
        updates, state = opt.update(grads_fn(params, x), state, params)
        return optax.apply_updates(params, updates), state

    params, state = step(params, state, one)
    assert float(params) == -1.0 and bool(state.last_finite)
    for k in range(2):
        params, state = step(params, state, nan)
        assert float(params) == -1.0 and not bool(state.last_finite)
        assert int(state.notfinite_count) == k + 1
    params, state = step(params, state, one)
    assert float(params) == -2.0 and bool(state.last_finite)
    for k in range(2):
        params, state = step(params, state, nan)
        assert float(params) == -2.0 and not bool(state.last_finite)
        assert int(state.notfinite_count) == k + 1
    params, state = step(params, state, nan)
    assert bool(jnp.isnan(params))
    assert int(state.total_notfinite) == 5


# -------------------------------------------------------- optax/schedules/_inject_test.py


def test_inject_hyperparams_schedule_of_momentum():
    """_inject_test's test_hyperparams_state (a stateful transform whose decay follows a
    schedule), with sgdx.trace's momentum, under optax's and sgdx's inject_hyperparams."""
    schedule = optax.piecewise_constant_schedule(0.8, {3: 0.5, 9: 1.25})
    expected_mom = [0.8] * 4 + [0.4] * 6 + [0.5] * 2
    for inject in (optax.inject_hyperparams, sgdx.inject_hyperparams):
        optim = inject(sgdx.trace)(momentum=schedule, nesterov=True)
        params = [jnp.zeros([2, 3]) for _ in range(3)]
        state = jax.jit(optim.init)(params)
        update_fn = jax.jit(optim.update)
        grads = jax.tree.map(jnp.ones_like, params)
        # optax's stores the value of the update just taken; sgdx's, as torch's param
        # groups, the value of the next update: one step ahead of optax's
        ahead = inject is sgdx.inject_hyperparams
        for i in range(12):
            expected = expected_mom[min(i + ahead, 11)]
            np.testing.assert_almost_equal(state.hyperparams["momentum"], expected)
            _, state = update_fn(grads, state)
        np.testing.assert_almost_equal(state.hyperparams["momentum"], expected_mom[-1])


def test_inject_hyperparams_updates():
    """_inject_test's test_updates (a stateless transform whose scale follows a schedule),
    with sgdx.scale_by_learning_rate under optax's and sgdx's inject_hyperparams."""
    expected = [3.0] * 2 + [15.0] * 6 + [30.0] * 5 + [45.0] * 3
    for inject in (optax.inject_hyperparams, sgdx.inject_hyperparams):
        optim = inject(sgdx.scale_by_learning_rate)(
            learning_rate=optax.piecewise_constant_schedule(3.0, {1: 5, 7: 2, 12: 1.5})
        )
        params = [jnp.zeros([], dtype=jnp.float32)]
        state = jax.jit(optim.init)(params)
        state = optax.tree.map_params(optim, lambda v: v, state)
        update_fn = jax.jit(optim.update)
        grads = [jnp.ones([], dtype=jnp.float32)]
        for i in range(15):
            updates, state = update_fn(grads, state, params=params)
            np.testing.assert_almost_equal(updates[0], -expected[i + 1])


def test_inject_hyperparams_overriding_hyperparam():
    optim = optax.inject_hyperparams(sgdx.sgd)(learning_rate=0.1)
    params = jnp.zeros((3, 5, 7))
    state = jax.jit(optim.init)(params)
    update_fn = jax.jit(optim.update)
    grads = jnp.ones_like(params)
    for i in range(5):
        state.hyperparams["learning_rate"] = jnp.asarray(float(i), jnp.float32)
        updates, state = update_fn(grads, state)  # no params: sgd without weight decay
        np.testing.assert_allclose(updates, -i * grads)


def test_inject_hyperparams_starts_with_step_count_zero():
    for inject in (optax.inject_hyperparams, sgdx.inject_hyperparams):
        opt = inject(sgdx.sgd)(learning_rate=lambda count: 0.1 * (count + 1))
        params = jnp.zeros(3)
        state = opt.init(params)
        assert int(state.count) == 0
        updates, state = opt.update(jnp.ones(3), state)
        np.testing.assert_allclose(updates, -0.1 * jnp.ones(3), rtol=1e-6)


# ---------------------------------------------------------------- optax/_src/update_test.py


def test_apply_updates():
    params = ({"a": jnp.ones((3, 2))}, jnp.ones((1,)))
    grads = jax.tree.map(lambda t: 2 * t, params)
    exp_params = jax.tree.map(lambda t: 3 * t, params)
    new_params = jax.jit(sgdx.apply_updates)(params, grads)
    test_utils.assert_trees_all_close(exp_params, new_params, atol=1e-10, rtol=1e-5)


def test_apply_updates_mixed_precision():
    params = ({"a": jnp.ones((3, 2), dtype=jnp.bfloat16)}, jnp.ones((1,), dtype=jnp.bfloat16))
    grads = jax.tree.map(lambda t: (2 * t).astype(jnp.float32), params)
    for leaf in jax.tree.leaves(jax.jit(sgdx.apply_updates)(params, grads)):
        assert leaf.dtype == jnp.bfloat16


def test_apply_updates_none_argument():
    assert sgdx.apply_updates(None, jnp.array([1.0, 2.0, 3.0])) is None


# ------------------------------------------------------------------ optax/_src/base_test.py


def test_isinstance():
    """base_test's test_isinstance: a transform is an optax GradientTransformation (and
    takes extra arguments), whether built by sgdx or wrapped by optax."""
    for tx in (sgdx.sgd(0.1), sgdx.chain(sgdx.sgd(0.1)), sgdx.inject_hyperparams(sgdx.sgd)(0.1)):
        assert isinstance(tx, optax.GradientTransformation)
        assert isinstance(tx, optax.GradientTransformationExtraArgs)
        assert isinstance(tx, sgdx.GradientTransformation)


def test_empty_parameter_trees():
    """Every sgdx transform returns ({}, state) for an empty tree, as optax's do."""
    for tx in (
        sgdx.sgd(0.1, momentum=0.9, weight_decay=0.1, nesterov=True),
        sgdx.sgd(0.1, 0.9, convention="sutskever"),
        sgdx.sgd(0.1, maximize=True, weight_decay=0.1, decoupled_weight_decay=True),
        sgdx.skip_nonfinite(sgdx.sgd(0.1, 0.9), grad_scale=2.0),
        sgdx.inject_hyperparams(sgdx.sgd)(0.1, momentum=0.9),
    ):
        state = tx.init({})
        updates, _ = tx.update({}, state, {})
        assert updates == {}
    assert sgdx.apply_updates({}, {}) == {}


# -------------------------------------------------------------- optax/_src/sharding_test.py

SHARDING_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, optax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from optax._src import test_utils
    import sgdx

    OPTIMIZERS = {
        "sgd": sgdx.sgd(1.0),
        "sgd_momentum": sgdx.sgd(1.0, momentum=0.9),
        "sgd_nesterov_decay": sgdx.sgd(1.0, 0.9, weight_decay=1e-4, nesterov=True),
        "sgd_dampening": sgdx.sgd(1.0, 0.9, dampening=0.1),
        "sgd_sutskever": sgdx.sgd(1.0, 0.9, convention="sutskever", momentum_correction=True),
        "sgd_decoupled": sgdx.sgd(1.0, 0.9, weight_decay=1e-4, decoupled_weight_decay=True),
        "inject": sgdx.inject_hyperparams(sgdx.sgd)(1.0, momentum=0.9),
        "optax_inject": optax.inject_hyperparams(sgdx.sgd)(learning_rate=1.0, momentum=0.9),
    }
    for name, optimizer in OPTIMIZERS.items():
        # test_init_with_abstract_input (optax's own inject_hyperparams cannot: it reads the
        # parameters' values for the hyperparameters' dtype)
        if name != "optax_inject":
            state = optimizer.init(jax.ShapeDtypeStruct(shape=(2, 4, 8), dtype=jnp.float32))
            assert state is not None, name

        mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
        sharding = NamedSharding(mesh, P(None, "x"))
        with jax.set_mesh(mesh):
            params = jnp.zeros((2, 8, 4), dtype=jnp.float16, out_sharding=sharding)
            # test_state_sharding_type_init_match_update
            state0 = optimizer.init(params)
            _, state1 = optimizer.update(params, state0, params)
            test_utils.assert_trees_all_equal(
                jax.tree.map(jax.typeof, state0), jax.tree.map(jax.typeof, state1))
            # test_state_sharding_type_preserved_with_jit
            state1 = jax.jit(optimizer.init)(params)
            test_utils.assert_trees_all_equal(
                jax.tree.map(jax.typeof, state0), jax.tree.map(jax.typeof, state1))
            _, state2 = optimizer.update(params, state0, params)
            _, state3 = jax.jit(optimizer.update)(params, state0, params)
            test_utils.assert_trees_all_equal(
                jax.tree.map(jax.typeof, state2), jax.tree.map(jax.typeof, state3))

        # optax's sharding recipe: the parameters' specs onto every parameter-shaped tree of
        # the state (optax.tree.map_params), the rest replicated, as jit(init)'s out_shardings
        mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
        params = {"w": jnp.ones((8, 4)), "b": jnp.ones((8,))}
        specs = {"w": P("x", None), "b": P("x")}
        state_specs = optax.tree.map_params(
            optimizer, lambda _, spec: spec, jax.eval_shape(optimizer.init, params), specs,
            transform_non_params=lambda _: P(),
        )
        shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs,
                                 is_leaf=lambda x: isinstance(x, P))
        state = jax.jit(optimizer.init, out_shardings=shardings)(params)
        buffers = [x for x in jax.tree.leaves(state) if x.shape == (8, 4)]
        assert all(b.sharding.spec == P("x", None) for b in buffers), name
        # and zero1_state_sharding still works on the same state
        shapes = jax.eval_shape(optimizer.init, params)
        zero1 = sgdx.sharding.zero1_state_sharding(shapes, mesh, "x")
        jax.jit(optimizer.init, out_shardings=zero1)(params)
    print("ok", len(OPTIMIZERS))
    """
)


def test_sharding_suite_and_map_params_recipe():
    result = subprocess.run(
        [sys.executable, "-c", SHARDING_SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip() == "ok 8"


# ------------------------------------------------------------ beyond optax's own test files


def _structure(state):
    return jax.tree.structure(state)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"momentum": 0.9},
        {"momentum": 0.9, "weight_decay": 1e-4, "nesterov": True},
        {"momentum": 0.9, "weight_decay": 0.0},
        {"momentum": 0, "weight_decay": 0},
    ],
    ids=["plain", "momentum", "nesterov-decay", "zero-decay", "zeros"],
)
def test_state_structure_does_not_depend_on_spelling(kwargs):
    """sgd, sgdx.inject_hyperparams(sgd) and optax.inject_hyperparams(sgd) hold one inner
    state structure for one configuration, and no buffer where momentum is off."""
    params = {"w": jnp.ones(3), "b": jnp.ones(1)}
    plain = sgdx.sgd(0.1, **kwargs).init(params)
    ours = sgdx.inject_hyperparams(sgdx.sgd)(0.1, **kwargs).init(params).inner_state
    assert _structure(ours) == _structure(plain)
    momentum_on = bool(kwargs.get("momentum"))
    assert isinstance(plain.momentum, sgdx.TraceState) == momentum_on
    theirs = optax.inject_hyperparams(sgdx.sgd)(learning_rate=0.1, **kwargs)
    if not kwargs.get("momentum", 1):  # optax makes every number an array: a traced 0
        return
    assert _structure(theirs.init(params).inner_state) == _structure(plain)


def test_optax_inject_of_sgd_without_params():
    tx = optax.inject_hyperparams(sgdx.sgd)(learning_rate=0.1)
    updates, _ = jax.jit(tx.update)(jnp.ones(2), tx.init(jnp.zeros(2)))
    np.testing.assert_allclose(updates, -0.1 * jnp.ones(2), rtol=1e-6)


def test_momentum_none_is_optax_spelling_of_no_momentum():
    params = jnp.ones(2)
    tx = sgdx.sgd(0.1, momentum=None)
    assert _structure(tx.init(params)) == _structure(sgdx.sgd(0.1).init(params))
    updates, _ = tx.update(jnp.ones(2), tx.init(params))
    np.testing.assert_allclose(updates, -0.1 * jnp.ones(2))


def test_python_float_parameters():
    tx = sgdx.sgd(0.5, momentum=0.9)
    params = {"a": 1.0, "b": 2.0}
    updates, _ = tx.update({"a": 1.0, "b": 1.0}, tx.init(params), params)
    assert sgdx.apply_updates(params, updates) == pytest.approx({"a": 0.5, "b": 1.5})
