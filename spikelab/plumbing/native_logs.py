"""TensorFlow's native start-up lines, kept off the console.

TensorFlow 2.21 writes "WARNING: All log messages before absl::InitializeLog() is called ..." and
oneDNN's "custom operations are on" from C++, once at import and once at the first op, before any
Python logging exists: TF_CPP_MIN_LOG_LEVEL, ABSL_MIN_LOG_LEVEL and TF_ENABLE_ONEDNN_OPTS=1 do not
silence them. So the stages import TensorFlow and run their first op inside
`quiet_native_startup()`: file descriptor 2 goes to a temporary file meanwhile, and every line
that is not one of those two comes back to stderr afterwards, in order. Nothing else is hidden.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

NOISE = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on")


def is_noise(line: str) -> bool:
    return any(marker in line for marker in NOISE)


@contextlib.contextmanager
def quiet_native_startup():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's later INFO lines, the usual way
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(True) if not is_noise(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
