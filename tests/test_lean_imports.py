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
