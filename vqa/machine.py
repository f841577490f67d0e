"""What a measurement ran on: the device, the software, and the machine's measured speed.

Benchmarks and the ablation record :func:`machine` beside their timings. Shared machines get
slower and faster from one hour to the next, so it also measures the fp32 matrix-multiply rate
at the moment of the run (:func:`matmul_gflops`): times from two runs compare only relative to
it.
"""

from __future__ import annotations

import os
import platform
import time

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on ``device``: CUDA runs asynchronously, the CPU does not."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(
    device: torch.device | str = "cpu", size: int = 512, seconds: float = 0.5
) -> float:
    """Measured fp32 matrix-multiply rate of ``device`` in GFLOP/s (best of repeated runs).

    Multiplies two ``size`` x ``size`` matrices for about ``seconds`` and keeps the fastest
    product, which is the least disturbed by other work on the machine.
    """
    device = torch.device(device)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)  # warm up
    synchronize(device)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return round(2 * size**3 / best / 1e9, 1)


def machine(device: torch.device | str | None = None) -> dict:
    """The device the numbers were measured on, the software, the load and the matmul rate.

    Returns a JSON-ready dict: ``device`` (``cpu`` / ``cuda:0``), ``device_name`` (the GPU or
    CPU model), ``cores``, ``threads`` (torch's), ``torch``, ``python``, ``platform``,
    ``load_average_1m`` (other work on a shared machine slows runs) and ``matmul_gflops``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_model(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "matmul_gflops": matmul_gflops(device),
    }


def describe(info: dict) -> str:
    """One line for a report: the device name, cores and threads, and the matmul rate."""
    return (
        f"{info['device_name']} ({info['cores']} cores, torch threads: {info['threads']}; "
        f"fp32 matmul {info['matmul_gflops']} GFLOP/s)"
    )
