"""Process-wide memory tuning for the compute loop."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from reportgen.errors import SettingsError
from reportgen.settings import parse_memory


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of returning it to the system.

    A pass with gradients holds every layer's [B, H, T, T] attention tensors, and when the batch
    is done glibc gives that memory back; the next batch then page-faults all of it in again,
    which on CPU costs about a fifth of a small model's saliency pass. This keeps blocks of up to
    32 MiB on the heap and up to 512 MiB of free heap before trimming: the resident set stays at
    its peak instead of falling between batches, and the peak itself barely moves (see
    benchmarks/RESULTS.md). Process-wide, so the command line calls it and the library leaves it
    to the caller. Returns whether it applied (glibc on Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(
        mallopt(option, value) == 1
        for option, value in (
            (m_mmap_threshold, 32 * 2**20),
            (m_trim_threshold, 512 * 2**20),
            (m_top_pad, 16 * 2**20),
        )
    )


def free_memory(device: torch.device) -> int:
    """Bytes the device has free now: CUDA's own count, else the system's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().available)


DEFAULT_SHARE = 0.5
"""Share of the free memory used when --max-memory is not given."""


def budget_bytes(device: torch.device, max_memory: str | None) -> int:
    """The memory a computation on `device` may use: --max-memory's size for it, or half of
    what the device has free."""
    if max_memory is None:
        return int(DEFAULT_SHARE * free_memory(device))
    sizes = parse_memory(max_memory)
    name = str(device) if device.index is not None or device.type != "cuda" else "cuda:0"
    for key in ("", name, device.type):
        if key in sizes:
            return sizes[key]
    raise SettingsError(
        f"--max-memory {max_memory} gives no size for {name}, where the computation runs"
    )


@dataclass(frozen=True)
class Footprint:
    """What a pass with gradients keeps for its backward, measured on the model at load:
    `per_token` bytes for every token of a row, `per_cell` for every cell of its T × T."""

    per_token: float
    per_cell: float

    def bytes(self, rows: int, tokens: int) -> int:
        return int(rows * (self.per_token * tokens + self.per_cell * tokens * tokens))


def saved_bytes(run: Callable[[], object], model: torch.nn.Module) -> int:
    """Bytes of the distinct tensors autograd saves for the backward while `run()` executes,
    the model's own weights and buffers (saved by reference, allocated once) left out."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            seen[(storage.data_ptr(), t.device.index or 0)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())
