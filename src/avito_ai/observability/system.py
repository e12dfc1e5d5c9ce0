"""System figures for /api/metrics: CPU, memory and disk from psutil; GPU from NVML + torch."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

import psutil

logger = logging.getLogger("avito_ai.system")


def prime_cpu_percent() -> None:
    """psutil's first non-blocking cpu_percent() is meaningless; take it at start-up."""
    psutil.cpu_percent(interval=None)


def system_metrics(disk_path: str = "/") -> dict[str, str]:
    memory = psutil.virtual_memory()
    return {
        "cpu_percent": f"{psutil.cpu_percent(interval=None):.1f}%",
        "memory_percent": f"{memory.percent:.1f}%",
        "memory_available_gb": f"{memory.available / 1024**3:.1f}",
        "disk_percent": f"{psutil.disk_usage(disk_path).percent:.1f}%",
    }


def _torch_allocated_gb(index: int) -> float | None:
    """Memory this process's torch allocated on the GPU, if torch is already in use here."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return float(torch.cuda.memory_allocated(index)) / 1024**3
    except Exception:  # a broken driver must not break the metrics endpoint
        return None
    return None


def gpu_metrics(index: int = 0) -> dict[str, Any]:
    """NVML view of GPU `index`, or {"available": False} where there is no NVIDIA GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return {"available": False}
    try:
        if pynvml.nvmlDeviceGetCount() <= index:
            return {"available": False}
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        utilization = pynvml.nvmlDeviceGetUtilizationRates(handle)
        allocated = _torch_allocated_gb(index)
        return {
            "available": True,
            "gpu_name": name.decode() if isinstance(name, bytes) else str(name),
            "gpu_memory_allocated_gb": f"{allocated if allocated is not None else 0.0:.1f}",
            "gpu_memory_used_gb": f"{memory.used / 1024**3:.1f}",
            "gpu_memory_total_gb": f"{memory.total / 1024**3:.1f}",
            "gpu_utilization": f"{float(utilization.gpu):.2f}%",
        }
    except Exception as exc:
        logger.warning("NVML query failed: %s", exc)
        return {"available": False, "error": str(exc)}
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def gpu_devices() -> list[dict[str, float]]:
    """Every NVIDIA GPU's memory (bytes) and utilization (0..1) from NVML; [] without any."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            utilization = pynvml.nvmlDeviceGetUtilizationRates(handle)
            devices.append(
                {
                    "index": float(index),
                    "used": float(memory.used),
                    "total": float(memory.total),
                    "utilization": float(utilization.gpu) / 100,
                }
            )
        return devices
    except Exception as exc:
        logger.warning("NVML query failed: %s", exc)
        return []
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
