"""Device and dtype selection: DEVICE=auto|cpu|cuda|cuda:N, DTYPE=auto|bfloat16|float16|float32."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu" or "cuda:N"
    dtype_name: str  # "bfloat16" | "float16" | "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[
            self.dtype_name
        ]


def free_memory(placement: Placement | None) -> None:
    """After weights are dropped: collect them, and give CUDA's cached blocks back."""
    import gc

    gc.collect()
    if placement is not None and placement.device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def cuda_problem(device: str) -> str | None:
    """Why a configured CUDA device cannot be used, or None when it can (or none is asked)."""
    if not device.startswith("cuda"):
        return None
    try:
        import torch
    except ImportError:
        return "DEVICE asks for CUDA but torch is not installed"
    if not torch.cuda.is_available():
        return f"DEVICE={device} but CUDA is not available on this machine"
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    count = torch.cuda.device_count()
    if index >= count:
        return f"DEVICE={device} but only {count} CUDA device(s) are visible"
    return None


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 or AVX-512 paths that make bf16 matmuls fast."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            flags = fh.read()
    except OSError:
        return False
    return any(f in flags for f in (" avx512_bf16", " amx_bf16", " avx512f"))


def resolve_placement(device: str, dtype: str) -> Placement:
    """Turn DEVICE/DTYPE settings into a concrete device and dtype. Raises RuntimeError."""
    import torch

    if device == "auto":
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = "cuda:0"
    problem = cuda_problem(device)
    if problem:
        raise RuntimeError(problem)
    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "bfloat16" if cpu_supports_bf16() else "float32"
    return Placement(device=device, dtype_name=dtype)
