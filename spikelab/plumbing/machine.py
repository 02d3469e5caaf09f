"""The machine a run was made on, in words: its CPU model. A chaotic run differs per CPU model in the
last bits from the first epoch (oneDNN picks kernels per instruction set), so runs are compared
against a baseline made on the same model."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path


def cpu_model() -> str:
    """`AMD EPYC 7B13`, from /proc/cpuinfo; the platform's processor or architecture elsewhere."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
