"""The machine a figure was measured on, in words: CPU model and cores (and the library versions)."""

from __future__ import annotations

import os
import platform
from importlib.metadata import version

from spikelab.plumbing.machine import cpu_model


def machine() -> str:
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()}, "
        f"TensorFlow {version('tensorflow-cpu')}, Keras {version('keras')}, DVC {version('dvc')}"
    )
