"""What every stage script shares: one clear line and exit code 2 for a user error."""
from __future__ import annotations

import sys

from spikelab.files import InputError
from spikelab.params import ParamsError
from spikelab.tracking import TrackingError

USER_ERRORS = (ParamsError, InputError, TrackingError)


def run_stage(main) -> None:
    """Call main(); a user error prints `error: <message>` (no stack trace) and exits 2."""
    try:
        main()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
