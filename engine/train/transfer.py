"""Host-to-device copies that never make the host wait for the device.

``tensor.to('cuda')`` from pageable memory synchronises the stream after the copy (PyTorch's copy without
``non_blocking``), and even ``non_blocking=True`` from pageable memory may: "If pageable memory must first be staged
to pinned memory, the driver may synchronize with the stream" (CUDA runtime API, "API synchronization behavior").
Either way the host stops queueing the next step until the device has finished the current one. A copy from pinned
memory with ``non_blocking=True`` is asynchronous; PyTorch's caching host allocator keeps the pinned block until the
copy's stream event has completed, so the source may be dropped at once. Every per-step copy of the engine goes
through ``to_device`` (engine/train/host_sync.py reports any other).
"""

from __future__ import annotations

import threading

import torch

_state = threading.local()


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` on ``device``, copied without a host sync (staged through pinned memory when the target is CUDA)."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
        t = t.pin_memory()
    _state.inside = True
    try:
        return t.to(device, non_blocking=True)
    finally:
        _state.inside = False


def inside_to_device() -> bool:
    """True while ``to_device`` copies (the host-sync recorder accepts the copies made there)."""
    return getattr(_state, "inside", False)
