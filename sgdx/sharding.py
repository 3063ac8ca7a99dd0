"""Sharding helpers for data-parallel training with sgdx state."""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["zero1_state_sharding"]


def zero1_state_sharding(state: Any, mesh: Mesh, axis: str = "data") -> Any:
    """ZeRO-1 shardings for an optimizer state: buffers split across ``axis``, the rest replicated.

    Each array leaf (or ``jax.ShapeDtypeStruct``, e.g. from ``jax.eval_shape(tx.init,
    params)``) is sharded along its first dimension that the ``axis`` size divides; scalars
    (counts, hyperparameters) and leaves with no such dimension are replicated. The
    per-parameter 1-D arrays (the first-update flags) are leaves like the others: sharded
    when the ``axis`` size divides the number of parameters, else replicated. Use it
    as ``out_shardings`` of a jitted ``tx.init`` and for the state in the jitted step, with
    the parameters replicated: every device then holds 1/n of the momentum buffers.

    Args:
      state: an optimizer state or its shapes.
      mesh: the device mesh.
      axis: the mesh axis to split the buffers across.

    Returns:
      A pytree of :class:`jax.sharding.NamedSharding` with the structure of ``state``.

    Examples:
      >>> import jax, jax.numpy as jnp, sgdx
      >>> mesh = jax.make_mesh((1,), ("data",))
      >>> tx = sgdx.sgd(0.1, momentum=0.9)
      >>> shapes = jax.eval_shape(tx.init, {"w": jnp.zeros((8, 3))})
      >>> spec = sgdx.sharding.zero1_state_sharding(shapes, mesh).momentum.momentum_buffer["w"].spec
      >>> spec == jax.sharding.PartitionSpec("data", None)
      True
    """
    if axis not in mesh.shape:
        raise ValueError(
            f"zero1_state_sharding: the mesh has no axis {axis!r}; its axes are "
            f"{tuple(mesh.shape)}. Pass axis= one of them (the data-parallel axis)."
        )
    size = mesh.shape[axis]

    def sharding(leaf: Any) -> NamedSharding:
        shape = getattr(leaf, "shape", ())
        for dim, extent in enumerate(shape):
            if extent % size == 0:
                spec: list[str | None] = [None] * len(shape)
                spec[dim] = axis
                return NamedSharding(mesh, PartitionSpec(*spec))  # type: ignore[no-untyped-call]
        return NamedSharding(mesh, PartitionSpec())  # type: ignore[no-untyped-call]

    return jax.tree.map(sharding, state)
