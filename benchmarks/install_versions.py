"""The spike doctor's light install on each Python this machine has: a fresh venv per version,
`pip install '<project>[jax]'` (the core, keras + numpy + pydantic + ruamel.yaml, and JAX as the
backend: no TensorFlow, no MLflow), then a real check in it: a small Keras model trained with
SpikeMonitor on the JAX backend until its loss spikes, and `python -m spikelab.diagnose` on the
CSVLogger file of that training.

    python -m benchmarks.install_versions [--pythons 3.10 3.11 3.12 3.13]

Prints one row per version: packages, the venv's size, the install's seconds, and the check's
result. It downloads from PyPI (JAX is ~600 MB a venv); its seconds are a wall clock of the
network and the machine at that moment, not a claim.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.workspace import copy_tracked_files

REPO = Path(__file__).resolve().parent.parent
# trains in seconds on 2 cores; lr high enough that Adam's loss spikes within 40 epochs
CHECK = r"""
import os, sys
os.environ["KERAS_BACKEND"] = "jax"
import numpy as np, keras
from spikelab.monitor import SpikeMonitor

rng = np.random.default_rng(0)
x = rng.normal(size=(512, 8, 8, 1)).astype("float32")
y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype("float32")
keras.utils.set_random_seed(0)
model = keras.Sequential([
    keras.Input((8, 8, 1)),
    keras.layers.Conv2D(4, 3, activation="relu"),
    keras.layers.Flatten(),
    keras.layers.Dense(1, activation="sigmoid"),
])
model.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy")
csv_path = sys.argv[1]
monitor = SpikeMonitor(x, y)
model.fit(x, y, epochs=40, batch_size=64, verbose=0, callbacks=[monitor, keras.callbacks.CSVLogger(csv_path)])
print("backend", keras.backend.backend(), "keras", keras.__version__, "numpy", np.__version__)
"""


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def find_python(version: str) -> str | None:
    """python<version> on PATH, else pyenv's own copy: pyenv's shim for a version that is not
    selected refuses to run."""
    found = shutil.which(f"python{version}")
    if found and run([found, "--version"]).returncode == 0:
        return found
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    copies = sorted(root.glob(f"{version}.*/bin/python{version}"))
    return str(copies[-1]) if copies else None


def check_version(version: str, work: Path) -> dict:
    python = find_python(version)
    row = {"python": version, "packages": None, "size_mb": None, "install_s": None, "check": ""}
    if python is None:
        return row | {"check": f"no python{version} on PATH"}
    venv = work / f"py{version}"
    made = run([python, "-m", "venv", str(venv)])
    if made.returncode != 0:
        return row | {"check": f"venv failed: {made.stderr.strip().splitlines()[-1]}"}
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    run([*pip, "install", "-q", "--upgrade", "pip"])
    started = time.monotonic()
    # a copy of the tracked files: pip builds in the source folder, and the repo's own venv stays out
    source = work / "source"
    if not source.exists():
        copy_tracked_files(REPO, source)
    installed = run([*pip, "install", "-q", f"{source}[jax]"])
    row["install_s"] = round(time.monotonic() - started)
    if installed.returncode != 0:
        return row | {"check": f"install failed: {(installed.stderr.strip().splitlines() or ['?'])[-1]}"}
    listed = run([*pip, "list", "--format=freeze"]).stdout.splitlines()
    row["packages"] = len([line for line in listed if not line.startswith(("pip==", "setuptools=="))])
    row["size_mb"] = round(folder_bytes(venv) / 1e6)
    if any(line.lower().startswith(("tensorflow", "mlflow")) for line in listed):
        return row | {"check": "the light install pulled TensorFlow or MLflow"}
    history = work / f"history-{version}.csv"
    trained = run([str(venv / "bin" / "python"), "-c", CHECK, str(history)], cwd=work, timeout=900)
    if trained.returncode != 0:
        return row | {"check": f"fit failed: {(trained.stderr.strip().splitlines() or ['?'])[-1]}"}
    verdict = [line for line in trained.stdout.splitlines() if "SpikeMonitor" in line or "spike" in line.lower()]
    read = run([str(venv / "bin" / "python"), "-m", "spikelab.diagnose", str(history)], cwd=work, timeout=300)
    if read.returncode != 0:
        return row | {"check": f"diagnose failed: {(read.stderr.strip().splitlines() or ['?'])[-1]}"}
    backend = next((line for line in trained.stdout.splitlines() if line.startswith("backend")), "")
    spoke = "a verdict" if verdict else "no spike line"
    return row | {"check": f"fit with SpikeMonitor ({spoke}) and diagnose ran; {backend}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pythons", nargs="+", default=["3.10", "3.11", "3.12", "3.13"])
    parser.add_argument("--keep", type=Path, help="keep the venvs in this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="spikelab-install-"))
    work.mkdir(parents=True, exist_ok=True)
    print("| python | packages | venv size (MB) | install (s) | check |")
    print("|---|---|---|---|---|")
    failed = 0
    try:
        for version in args.pythons:
            row = check_version(version, work)
            failed += not row["check"].startswith("fit with")
            print(
                f"| {row['python']} | {row['packages']} | {row['size_mb']} | {row['install_s']} | {row['check']} |",
                flush=True,
            )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
