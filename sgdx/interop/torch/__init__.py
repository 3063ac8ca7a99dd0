"""``torch.optim.SGD`` and its learning-rate scheduler <-> sgdx. torch is imported on use.

Two levels:

- A live run, in one call each way: :func:`from_torch` takes a ``torch.optim.SGD``, its
  model (or named parameters) and its scheduler, and returns the sgdx transformation, its
  state and the parameters, positioned so that stepping on in JAX is stepping on in torch;
  :func:`to_torch` writes the optimizer and scheduler state dicts (and the parameters) that
  torch's ``load_state_dict`` calls accept, so torch goes on exactly as sgdx would have.
- A checkpoint into an sgdx optimizer you built: :func:`load_state_dict` fills a
  :func:`sgdx.param_groups` or ``sgdx.inject_hyperparams(sgdx.sgd)`` state from
  ``optimizer.state_dict()``, and :func:`state_dict` writes one.

Parameters are matched by name: the dotted pytree paths (``params["fc1"]["weight"]`` is
``"fc1.weight"``, list index ``i`` is ``"i"``), in the order of torch's optimizer (group by
group, as ``state_dict()["param_groups"][i]["params"]`` numbers them). For one group built
from ``model.parameters()`` that is ``[name for name, _ in model.named_parameters()]``;
state dicts saved by an optimizer built from ``model.named_parameters()`` carry them.
"""

from sgdx.interop.torch._handover import TorchCheckpoint, TorchRun, from_torch, to_torch
from sgdx.interop.torch._state_dict import load_state_dict, state_dict

__all__ = [
    "TorchCheckpoint",
    "TorchRun",
    "from_torch",
    "load_state_dict",
    "state_dict",
    "to_torch",
]
