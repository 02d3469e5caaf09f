"""A stage process must not outlive its parent: `dvc repro` stopped means the training stops.

Without this, SIGTERM (or SIGKILL) to `dvc repro` leaves the train stage running on alone for the
rest of its epochs, writing outputs DVC will never record and holding the MLflow run RUNNING.
Linux's prctl(PR_SET_PDEATHSIG) has the kernel send the stage a signal when its parent exits;
the stage turns SIGTERM into a KILLED run with no outputs, as for any interruption.
Kept free of heavy imports: it runs first thing in the stage.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel for `signum` when the parent exits; False where prctl does not exist (not Linux).

    The request covers a parent that exits after it, so the parent is checked right after: if it
    is already gone (this process was re-parented), the signal is sent now.
    """
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)
    return True
