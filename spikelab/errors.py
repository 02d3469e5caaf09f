"""The user errors of the lab, and the one way every entry point reports them.

A user error is a bad input the user can fix (params.yaml, a stage input, the tracking store, a
sweep file): it is shown as one line, `error: <message>`, with exit status 2 and no traceback.
Kept free of heavy imports: generate and split never load TensorFlow or MLflow, and a bad
params.yaml is reported before anything heavy loads.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable


class UserError(Exception):
    """A bad input the user can fix; the message is shown as is, on one line."""


class ParamsError(UserError, ValueError):
    """A bad value in params.yaml; the message names the key, the value and what is allowed."""


class InputError(UserError):
    """A missing or unreadable stage input; the message names the file and the stage to re-run."""


class TrackingError(UserError):
    """The tracking store cannot be used; raised before any training starts."""


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def exit_code_of(main: Callable[[], int | None]) -> int:
    """Call main(); a user error prints `error: <message>` on one line and gives 2."""
    try:
        return main() or 0
    except UserError as error:
        print("error: " + one_line(error), file=sys.stderr)
        return 2


def run_entry_point(main: Callable[[], int | None]) -> None:
    """`if __name__ == "__main__": run_entry_point(main)` for every stage and tool."""
    code = exit_code_of(main)
    # the interpreter's last garbage collection walks every object TensorFlow, Keras and MLflow
    # made, about a second of each stage's exit. Frozen objects are skipped; the work is done,
    # files are closed, and atexit handlers still run
    gc.freeze()
    sys.exit(code)
