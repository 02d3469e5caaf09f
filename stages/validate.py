"""Stage validate: params.yaml -> <checked> (one constant line), before any other stage runs.

python -m stages.validate data/params.checked

DVC deletes a stage's outputs before it runs the stage, and each stage checks its params itself:
bad params found there leave the last good outputs deleted. This stage depends on params.yaml
whole and `generate` on its output, so `dvc repro` and `dvc exp run` read params.yaml first, as
the stages read it (spikelab.params.load_params), and stop in one line with every output still in
place. An unknown section (which no stage lists) is refused here too. The output never changes, so
an edit of params.yaml reruns only the stages whose params changed.
"""

import sys

from spikelab.params import load_params
from spikelab.plumbing.errors import run_entry_point
from spikelab.plumbing.files import atomic_path

CHECKED = "params.yaml: valid\n"


def main() -> None:
    output = sys.argv[1]
    load_params()
    with atomic_path(output) as tmp:
        tmp.write_text(CHECKED)
    print(f"validate: params.yaml is valid -> {output}")


if __name__ == "__main__":
    run_entry_point(main)
