"""Stage validate: params.yaml -> <checked> (one constant line), before any other stage runs.

python -m stages.validate data/params.checked
python -m stages.validate                      (the checks alone: nothing written)

DVC deletes a stage's outputs before it runs the stage, and each stage checks its params itself:
bad params found there leave the last good outputs deleted. This stage depends on params.yaml
whole and `generate` on its output, so `dvc repro` and `dvc exp run` read params.yaml first, as
the stages read it (spikelab.params.load_params), and stop in one line with every output still in
place. It refuses what a later stage would refuse or train on as garbage: an unknown section
(which no stage lists), numbers the float32 model would see as inf, 0 or 1, sizes beyond the
machine's memory, a train.resume_from that is not a snapshot of this lab. The output never
changes, so an edit of params.yaml reruns only the stages whose params changed.

DVC parses params.yaml itself before this stage runs (for the stages' `params:`): a file its
parser fails on (an alias bomb, a 5,000-digit integer) stops DVC first, outputs untouched, in
DVC's words; run this stage's checks alone (the second form) for the lab's line.
"""

import sys

from spikelab.params import load_params
from spikelab.plumbing.errors import run_entry_point
from spikelab.plumbing.files import atomic_path
from spikelab.snapshots import check_named_files

CHECKED = "params.yaml: valid\n"


def main() -> None:
    check_named_files(load_params())
    if len(sys.argv) < 2:
        print("validate: params.yaml is valid")
        return
    output = sys.argv[1]
    with atomic_path(output) as tmp:
        tmp.write_text(CHECKED)
    print(f"validate: params.yaml is valid -> {output}")


if __name__ == "__main__":
    run_entry_point(main)
