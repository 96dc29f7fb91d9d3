"""Find host synchronisations of device code on a CPU-only machine, with the meta device standing in for CUDA.

A GPU step is only as fast as the raw model step when the host never waits for the device: the CPU queues the next
batch's kernels while the GPU runs the current ones. Code run on meta tensors has no data, so every point where a
CUDA run would block the host shows up here as an operation this recorder sees:

- ``item()`` / ``bool()`` / ``float()`` of a device tensor (``aten._local_scalar_dense``) and device-to-host copies
  (``.cpu()``, ``.numpy()`` via a copy): recorded, answered with zeros so the code runs on;
- host-to-device copies without ``non_blocking=True`` (PyTorch then calls cudaStreamSynchronize after the copy),
  and non-blocking ones from pageable memory not made by ``engine.train.transfer.to_device`` (the CUDA driver may
  synchronise the stream to stage them; ``to_device`` pins them on CUDA): recorded;
- ``torch.tensor(data, device=...)`` / ``torch.as_tensor``: their copy runs below the dispatcher, so the two
  functions are wrapped while recording;
- operations whose output shape depends on the data (nonzero, boolean-mask indexing, unique, bincount: CUDA reads
  a size back to the host): meta cannot run them, so they raise, and the recorder names them first.

It also counts the device operations that would launch a kernel (everything on a device tensor but views and bare
allocations): the host pays a launch for each, so the count bounds how fast a step can be issued
(benchmarks/launch_audit.py). Used by tests/test_host_sync.py on every training stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from engine.train.transfer import inside_to_device

META = torch.device("meta")
DATA_DEPENDENT = ("nonzero", "masked_select", "unique", "bincount", "repeat_interleave", "histc")
NO_KERNEL = ("empty", "empty_strided", "new_empty", "new_empty_strided", "empty_like", "_local_scalar_dense")


def _devices(args, kwargs) -> set[str]:
    return {leaf.device.type for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)}


@dataclass
class SyncRecorder(TorchDispatchMode):
    """Context manager recording every host sync a CUDA run of the enclosed code would make (``meta`` as device)."""

    events: list[str] = field(default_factory=list)
    tag: str = ""  # set by the caller (e.g. the step number) to say where each event happened
    launches: int = 0  # device operations that launch a kernel (views and allocations excluded)

    def __post_init__(self):
        super().__init__()
        self._originals: dict[str, object] = {}

    def __enter__(self):
        for name in ("tensor", "as_tensor"):
            self._originals[name] = original = getattr(torch, name)
            setattr(torch, name, self._watch_factory(name, original))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._originals.items():
            setattr(torch, name, original)
        return super().__exit__(*exc)

    def _watch_factory(self, name: str, original):
        def factory(data, *args, **kwargs):
            device = kwargs.get("device")
            if device is not None and torch.device(device).type == "meta":
                self.events.append(f"{self.tag}: torch.{name}(..., device=) copies from the host and waits")
            return original(data, *args, **kwargs)
        return factory

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        devices = _devices(args, kwargs)
        if "meta" in devices and (name.lstrip("_") in DATA_DEPENDENT or _boolean_mask_index(name, args)):
            self.events.append(f"{self.tag}: {name} (output size read back to the host)")
            raise RuntimeError(f"host sync: {name} on a device tensor has a data-dependent output size")
        if name == "_local_scalar_dense" and "meta" in devices:
            self.events.append(f"{self.tag}: item() of a device tensor")
            return _zero_scalar(args[0].dtype)
        out = self._copy(func, name, args, kwargs, devices) if name in ("_to_copy", "copy_") else func(*args, **kwargs)
        if not func.is_view and name not in NO_KERNEL and "meta" in devices | _devices(out, {}):
            self.launches += 1
        return out

    def _copy(self, func, name, args, kwargs, devices):
        source = args[1] if name == "copy_" else args[0]
        target = args[0].device.type if name == "copy_" else str(kwargs.get("device", source.device))
        if source.device.type == "meta" and target == "cpu":
            self.events.append(f"{self.tag}: device-to-host copy of {tuple(source.shape)}")
            shaped = torch.zeros(source.shape, dtype=kwargs.get("dtype") or source.dtype)
            return args[0].copy_(shaped) if name == "copy_" else shaped
        if source.device.type == "cpu" and target == "meta":
            if not _non_blocking(name, args, kwargs):
                self.events.append(f"{self.tag}: blocking host-to-device copy of {tuple(source.shape)}")
            elif not (inside_to_device() or source.is_pinned()):
                self.events.append(f"{self.tag}: pageable host-to-device copy of {tuple(source.shape)}")
        return func(*args, **kwargs)


def _boolean_mask_index(name: str, args) -> bool:
    """x[mask] / x[mask] = v with a bool index: the kernel runs nonzero on the mask first."""
    if name not in ("index", "index_put", "index_put_"):
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1])


def _non_blocking(name: str, args, kwargs) -> bool:
    if name == "copy_":
        return bool(args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
    return bool(kwargs.get("non_blocking", False))


def _zero_scalar(dtype: torch.dtype):
    if dtype == torch.bool:
        return False
    return 0.0 if dtype.is_floating_point else 0
