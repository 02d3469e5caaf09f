"""The machine a figure was measured on, in words: CPU model and cores (and the library versions)."""

from __future__ import annotations

import contextlib
import os
import platform
from importlib.metadata import version
from pathlib import Path


def machine() -> str:
    model_name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    return (
        f"{model_name}, {os.cpu_count()} cores, {platform.system()}, "
        f"TensorFlow {version('tensorflow-cpu')}, Keras {version('keras')}, DVC {version('dvc')}"
    )
