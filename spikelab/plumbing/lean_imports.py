"""Keras without scikit-learn: about 0.45 s less start-up for each stage that loads TensorFlow.

Keras 3 imports scikit-learn whenever it is installed, for its `keras.wrappers` (scikit-learn
estimators around a Keras model), which the lab never uses; MLflow requires scikit-learn, so it is
always installed. Importing Keras while `sklearn` reads as missing makes Keras take it for absent,
as on a machine without it: its wrappers would then refuse to build, nothing else changes.
"""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def without_sklearn():
    """Inside: `import sklearn` raises ImportError (unless it is loaded already); after: it imports."""
    if "sklearn" in sys.modules:
        yield
        return
    sys.modules["sklearn"] = None  # the import system's "known missing" mark
    try:
        yield
    finally:
        if sys.modules.get("sklearn", ...) is None:
            del sys.modules["sklearn"]
