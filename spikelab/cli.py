"""What every stage script shares: one clear line and exit code 2 for a user error.

Kept free of MLflow and TensorFlow (seconds to import): generate and split never need them,
and a bad params.yaml is reported before anything heavy loads.
"""
from __future__ import annotations

import sys

from spikelab.files import InputError
from spikelab.params import ParamsError


class TrackingError(RuntimeError):
    """The tracking store cannot be used; raised before any training starts."""


USER_ERRORS = (ParamsError, InputError, TrackingError)


def run_stage(main) -> None:
    """Call main(); a user error prints `error: <message>` on one line (no stack trace) and exits 2."""
    try:
        main()
    except USER_ERRORS as error:
        print("error: " + " ".join(str(error).split("\n")), file=sys.stderr)
        sys.exit(2)
