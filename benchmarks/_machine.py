"""What the benchmarks print about the machine and interpreter they ran on.

Numbers from a shared 2-vCPU VM drift by tens of percent; a table is only
meaningful next to the interpreter, CPU and library versions that produced it.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["cpu_model", "library_version", "machine_info", "machine_summary"]


def cpu_model() -> str:
    """Return the CPU model name from ``/proc/cpuinfo``, or ``platform.processor()``."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def library_version(distribution: str) -> str:
    """Return the installed version of ``distribution``, or ``"not installed"``."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, str]:
    """Return the interpreter, OS, CPU and library versions as strings (for JSON output)."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "python_build": " ".join(platform.python_build()),
        "executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": str(os.cpu_count() or "?"),
        "reactive_bp": library_version("reactive-bp"),
        "reactivex": library_version("reactivex"),
    }


def machine_summary() -> str:
    """Return one line naming the interpreter, OS, CPU and library versions."""
    info = machine_info()
    return (
        f"{info['implementation']} {info['python']} on {info['platform']}; "
        f"{info['cpu']}, {info['cpu_count']} CPUs; "
        f"reactive_bp {info['reactive_bp']}, reactivex {info['reactivex']}"
    )
