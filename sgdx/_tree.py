"""Pytree plumbing shared by the transforms: leaf-wise maps with ``None`` gradients,
structure/shape/dtype checks that name the offending path, sharding matching, zeros placed
like a leaf, saturating counters. The bottom layer: it imports nothing from sgdx."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import keystr, tree_flatten_with_path

PyTree = Any
Updates = Any

_MAX_PATHS_SHOWN = 5


def is_none(x: Any) -> bool:
    return x is None


def _paths(tree: PyTree, is_leaf: Callable[[Any], bool] | None = None) -> list[str]:
    return [keystr(path) for path, _ in tree_flatten_with_path(tree, is_leaf=is_leaf)[0]]


def same_structure(a: Any, b: Any) -> bool:
    return bool(a == b)


def _structure_error(updates: Updates, tree: PyTree, name: str) -> ValueError:
    update_paths = _paths(updates, is_none)
    tree_paths = _paths(tree)
    only_updates = [p for p in update_paths if p not in set(tree_paths)][:_MAX_PATHS_SHOWN]
    only_tree = [p for p in tree_paths if p not in set(update_paths)][:_MAX_PATHS_SHOWN]
    if only_updates or only_tree:
        detail = f"paths only in the updates: {only_updates}; paths only in the {name}: {only_tree}"
    else:
        detail = (
            f"same paths, different containers: updates {jax.tree.structure(updates, is_none)}"
            f" vs {name} {jax.tree.structure(tree)}"
        )
    return ValueError(
        f"The updates (gradients) do not have the structure of the {name}: {detail}. Pass "
        "gradients with exactly the parameters' tree structure, with None for a parameter "
        "that has no gradient in this step."
    )


def map_updates(
    fn: Callable[..., tuple[Any, ...]],
    updates: Updates,
    *trees: PyTree,
    names: Sequence[str],
    same_shape_as: int | None = None,
) -> tuple[PyTree, ...]:
    """Applies ``fn(u, *leaves)`` at each leaf of ``updates`` that is not ``None``.

    ``fn`` returns one value per input (``updates`` first, then each of ``trees``); at a
    ``None`` update the row is ``(None, *leaves)``: no gradient, nothing changes. Returns
    one tree per input. Raises a ``ValueError`` naming the path when a tree does not have
    the structure of ``updates`` or, for ``trees[same_shape_as]``, when a leaf's shape
    differs, and a ``TypeError`` when an update is not a floating or complex array.
    """
    flat, treedef = tree_flatten_with_path(updates, is_leaf=is_none)
    columns = []
    for tree, name in zip(trees, names, strict=True):
        leaves, structure = jax.tree.flatten(tree, is_leaf=is_none)
        if not same_structure(structure, treedef):
            raise _structure_error(updates, tree, name)
        columns.append(leaves)
    rows = []
    for i, (path, u) in enumerate(flat):
        leaves = [column[i] for column in columns]
        if u is None:
            rows.append((None, *leaves))
            continue
        if not isinstance(u, int | float | complex | np.ndarray | np.generic | jax.Array) or (
            isinstance(u, np.ndarray | np.generic) and u.dtype.kind not in "biufc"
        ):
            raise TypeError(
                f"The update at {keystr(path)} is {type(u).__name__} {u!r:.40}; sgdx transforms "
                "take arrays (or None for a parameter without a gradient in this step)."
            )
        u = jnp.asarray(u)
        if not jnp.issubdtype(u.dtype, jnp.inexact):
            raise TypeError(
                f"The update at {keystr(path)} has dtype {u.dtype}; sgdx transforms need "
                "floating-point or complex updates. Differentiate with respect to floating "
                "parameters only (e.g. filter integer leaves out of the parameter tree)."
            )
        if same_shape_as is not None:
            ref = leaves[same_shape_as]
            if jnp.iscomplexobj(u) and not jnp.iscomplexobj(ref):
                raise TypeError(
                    f"The update at {keystr(path)} is complex ({u.dtype}) but the "
                    f"{names[same_shape_as]} leaf there is real ({jnp.result_type(ref)}); "
                    "torch refuses a complex gradient for a real parameter too. Pass jnp.real "
                    "of the gradient for a real parameter, or make the parameter complex."
                )
            if jnp.shape(ref) != u.shape:
                raise ValueError(
                    f"The update at {keystr(path)} has shape {u.shape} but the "
                    f"{names[same_shape_as]} leaf there has shape {jnp.shape(ref)}. Each "
                    "gradient must have its parameter's shape."
                )
        rows.append(fn(u, *leaves))
    if not rows:  # an empty tree: every output is the empty tree
        return tuple(jax.tree.unflatten(treedef, []) for _ in range(1 + len(trees)))
    return tuple(jax.tree.unflatten(treedef, column) for column in zip(*rows, strict=True))


def positions(tree: PyTree) -> list[int | None]:
    """For each leaf of ``tree`` (``None`` leaves included, in ``jax.tree.flatten`` order with
    ``None`` as a leaf), its index in the per-parameter vector of :func:`per_leaf`, or
    ``None`` for a ``None`` leaf."""
    leaves = jax.tree.leaves(tree, is_leaf=is_none)
    counts = itertools.accumulate(leaf is not None for leaf in leaves)
    return [None if leaf is None else k - 1 for leaf, k in zip(leaves, counts, strict=True)]


def per_leaf(vector: jax.Array, tree: PyTree, name: str) -> PyTree:
    """``vector[k]`` at the ``k``-th leaf of ``tree`` (``None`` leaves stay ``None``).

    The state layout of per-parameter scalars (the momentum transforms' first-update flags
    and last learning rates): one 1-D array over ``jax.tree.leaves(tree)``, not a tree of
    0-d arrays, so that a recipe giving every parameter-shaped tree of a state the
    parameters' shardings (``optax.tree.map_params``) leaves it alone. :func:`stack` is the
    inverse. Raises a ``ValueError`` when the lengths differ.
    """
    at = positions(tree)
    present = sum(k is not None for k in at)
    if jnp.shape(vector) != (present,):
        raise ValueError(
            f"The state's {name} have shape {jnp.shape(vector)}, expected ({present},): "
            "one per parameter. Was this state made for other parameters? Build it with "
            "this optimizer's init(params)."
        )
    treedef = jax.tree.structure(tree, is_leaf=is_none)
    return jax.tree.unflatten(treedef, [None if k is None else vector[k] for k in at])


def stack(tree: PyTree, dtype: Any) -> jax.Array:
    """The 0-d leaves of ``tree`` (``None`` skipped) as one 1-D array of ``dtype``."""
    leaves = [jnp.asarray(x).astype(dtype) for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves) if leaves else jnp.zeros((0,), dtype)


def check_inexact(params: PyTree, who: str) -> None:
    """Raises a ``TypeError`` naming the first parameter that is not floating or complex."""
    for path, p in tree_flatten_with_path(params)[0]:
        dtype = getattr(p, "dtype", None)
        if dtype is None and isinstance(p, float | complex):  # a Python scalar, as optax takes
            dtype = jnp.result_type(p)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{who}: the parameter at {keystr(path)} has dtype {dtype}; SGD updates "
                "floating-point (float16/bfloat16/float32/float64) or complex parameters "
                "only. Keep integer, boolean and non-array leaves out of the optimized tree "
                "(e.g. with optax.masked or eqx.filter)."
            )


def check_gradient_dtypes(updates: Updates, params: PyTree, who: str) -> None:
    """Raises a ``TypeError`` naming the first path where a real gradient's dtype is not its
    parameter's (torch refuses such a gradient). Python scalars, ``None`` gradients and
    trees of another structure (reported by the transforms) are not checked here."""
    flat, treedef = tree_flatten_with_path(updates, is_leaf=is_none)
    p_leaves, p_def = jax.tree.flatten(params, is_leaf=is_none)
    if not same_structure(p_def, treedef):
        return
    for (path, g), p in zip(flat, p_leaves, strict=True):
        g_dtype, p_dtype = getattr(g, "dtype", None), getattr(p, "dtype", None)
        if g_dtype is None or p_dtype is None or g_dtype == p_dtype:
            continue
        if not jnp.issubdtype(g_dtype, jnp.floating) or not jnp.issubdtype(p_dtype, jnp.floating):
            continue  # the transforms say what an integer or complex gradient needs
        raise TypeError(
            f"{who}: the gradient at {keystr(path)} has dtype {g_dtype} but its parameter has "
            f"dtype {p_dtype}; torch refuses it too (\"The gradient must match the tensor's "
            "grad_dtype\"), since its update would be computed in the gradient's precision. "
            "Cast the gradients to the parameters' dtypes: "
            "jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)."
        )


def as_dtype(dtype: Any) -> np.dtype | None:
    """``dtype`` as a numpy dtype (``jnp.float32``, ``"bfloat16"``, ...), or ``None`` for
    something that is not a dtype (an array, which numpy would read as its own dtype, too)."""
    if isinstance(dtype, np.ndarray | jax.Array):
        return None
    try:
        kind: np.dtype = np.dtype(dtype)
    except TypeError:
        return None
    return kind


def check_accumulator_dtype(dtype: Any, who: str) -> None:
    """Raises a ``TypeError`` unless ``dtype`` is ``None`` or a floating or complex dtype."""
    if dtype is None:
        return
    kind = as_dtype(dtype)
    if kind is None or not jnp.issubdtype(kind, jnp.inexact):
        raise TypeError(
            f"{who}: accumulator_dtype must be a floating or complex dtype (e.g. jnp.float32) "
            f"or None, got {dtype!r}; an integer or bool buffer would round every update away."
        )


def check_state(state: Any, expected: type, who: str) -> None:
    """Raises a ``TypeError`` when ``state`` is not the state ``who`` builds."""
    if not isinstance(state, expected):
        got = type(state)
        name = (
            f"{got.__module__}.{got.__qualname__}"
            if got.__name__ == expected.__name__
            else got.__name__
        )
        raise TypeError(
            f"{who}: expected sgdx's {expected.__name__}, got {name}. The state was made by "
            "a different optimizer (or configuration); build it with this optimizer's "
            "init(params)."
        )


def made_by(state: Any) -> str:
    """A sentence naming the library whose state types ``state`` holds when it is not sgdx
    (an optax state handed to an sgdx transform), else asking whether another sgdx
    configuration made it."""
    nodes = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, tuple) and hasattr(x, "_fields"))
    foreign = sorted(
        {
            f"{type(x).__module__.partition('.')[0]}.{type(x).__name__}"
            for x in nodes
            if hasattr(x, "_fields") and not type(x).__module__.startswith("sgdx")
        }
    )
    if foreign:
        return (
            f"The state holds {', '.join(foreign)}: it was made by another library's "
            "optimizer (an optax state has another layout than sgdx's, and optax.sgd's "
            "momentum starts at zero where torch's and sgdx's copy the first gradient). "
        )
    return "Was this state made by a different optimizer configuration? "


def match_sharding(x: jax.Array, reference: jax.Array) -> jax.Array:
    """``x`` resharded like ``reference`` when ``reference`` is explicitly sharded.

    Under JAX's explicit sharding (``jax.make_mesh`` axes are ``Explicit`` by default) the
    operands of a select must agree, so a replicated gradient meets a sharded (ZeRO-1)
    buffer in the buffer's layout. Outside explicit sharding this is the identity.
    """
    target = jax.typeof(reference).sharding
    explicit = jax.sharding.AxisType.Explicit in tuple(getattr(target.mesh, "axis_types", ()))
    if not explicit or jax.typeof(x).sharding == target:
        return x
    resharded: jax.Array = jax.sharding.reshard(x, target)  # type: ignore[no-untyped-call]
    return resharded


def zeros_like(x: Any, dtype: Any = None) -> jax.Array:
    """``jnp.zeros_like(x, dtype)``, with ``x``'s sharding, made without compiling anything.

    Eager ``jnp.zeros_like`` compiles one XLA program per distinct shape (for a tree of
    2000 distinct shapes: 90 s and 2.6 GB on a 2-core CPU). Here the zeros of a concrete
    array are made in host memory and placed as ``jnp.zeros_like`` places them: shard by
    shard with the sharding of a committed ``x``, on the default device for an uncommitted
    one. A traced ``x`` (``init`` inside ``jax.jit``) takes ``jnp.zeros_like``.
    """
    if isinstance(x, jax.core.Tracer) or not isinstance(x, jax.Array):
        return jnp.zeros_like(x, dtype=dtype)
    host_dtype = jax.dtypes.canonicalize_dtype(dtype or x.dtype)
    if not x.committed:  # device_put without a device: uncommitted (jnp.asarray would copy)
        placed: jax.Array = jax.device_put(np.zeros(x.shape, host_dtype))
        return placed

    def shard(index: tuple[slice, ...] | None) -> np.ndarray:  # None: the whole array
        slices = index or (slice(None),) * x.ndim
        shape = [len(range(*s.indices(n))) for s, n in zip(slices, x.shape, strict=True)]
        return np.zeros(shape, host_dtype)

    return jax.make_array_from_callback(x.shape, x.sharding, shard)


def host_array(value: np.ndarray, tree: PyTree) -> jax.Array:
    """A small array for the state of ``tree``'s optimizer, placed as ``jnp.asarray`` places a
    new array, without compiling anything: replicated over the mesh set with
    ``jax.set_mesh``, else uncommitted on the default device; inside ``jax.jit`` (a leaf of
    ``tree`` is a tracer) it is ``jnp.asarray``. For the state's per-parameter flags, whose
    type, sharding included, must be the one ``update`` gives them."""
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree)):
        return jnp.asarray(value)
    abstract_mesh = getattr(jax.sharding, "get_abstract_mesh", None)  # jax >= 0.7
    if abstract_mesh is None or not abstract_mesh().axis_names:
        placed: jax.Array = jax.device_put(value)
        return placed
    try:
        mesh = jax.sharding.get_mesh()  # type: ignore[attr-defined,unused-ignore]
    except ValueError:  # inside jax.jit with nothing traced in ``tree`` (an empty tree)
        return jnp.asarray(value)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())  # type: ignore[no-untyped-call,unused-ignore]
    return jax.device_put(value, replicated)  # type: ignore[no-any-return,unused-ignore]


def safe_increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the dtype's maximum instead of wrapping around."""
    limit = np.iinfo(count.dtype).max
    return jnp.where(count < limit, count + 1, limit).astype(count.dtype)
