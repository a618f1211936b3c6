"""What machine this is, as the metrics and the benchmark reports record it: the CPU model, the
instruction set Numba compiles for, the L2 cache size, the core count. Depends on nothing else in
the package; Numba is imported only when asked about."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def l2_bytes() -> int | None:
    """The L2 cache size of one core in bytes (Linux sysfs), or None where it is not known."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for index in sorted(base.glob("index*")):
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return None


def numba_target() -> str:
    """The CPU and vector ISA that Numba compiles for (NUMBA_CPU_NAME may differ from the host),
    e.g. "znver3 (AVX2)" or "znver4 (AVX-512)"."""
    import numba
    from llvmlite import binding
    from numba.core.registry import cpu_target
    name = numba.config.CPU_NAME or binding.get_host_cpu_name()
    try:
        features = cpu_target.target_context.codegen()._tm_features.split(",")  # (Numba internals)
    except AttributeError:
        return name
    isa = ("AVX-512" if "+avx512f" in features else "AVX2" if "+avx2" in features
           else "AVX" if "+avx" in features else "SSE")
    return f"{name} ({isa})"


def machine_info() -> dict:
    """CPU, cores, Python and NumPy versions: the machine a metrics file was measured on."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__}
