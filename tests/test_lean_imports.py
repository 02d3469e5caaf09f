"""Keras loads without scikit-learn inside `without_sklearn`, and scikit-learn still imports after."""

import subprocess
import sys

CHECK = """
import sys
from spikelab.plumbing.lean_imports import without_sklearn
with without_sklearn():
    import keras
print("sklearn" in sys.modules)
import sklearn
print(sklearn.__name__)
"""


def test_keras_loads_without_sklearn_and_sklearn_still_imports_after():
    # a fresh interpreter: this one has imported Keras (and with it scikit-learn) long ago
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "sklearn"]


LOGGING_ONLY = """
import sys
import spikelab.tracking, stages.rules
print(sorted(name for name in ("keras", "tensorflow", "jax", "torch") if name in sys.modules))
"""


def test_the_stages_that_only_log_start_without_keras_or_tensorflow():
    """The rules stage logs its metrics to MLflow: importing Keras for that cost it seconds of every
    `make exp` (about a third of its wall time on a loaded 2-core machine)."""
    from conftest import REPO

    result = subprocess.run([sys.executable, "-c", LOGGING_ONLY], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.split() == ["[]"]
