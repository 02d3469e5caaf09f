"""Stage split: <lines.npz> -> <split.npz> (shuffled, val_per_class held out, one-hot labels).

python -m stages.split data/lines.npz data/split.npz
"""

import sys

from spikelab.data import split
from spikelab.params import load_params
from spikelab.plumbing.errors import run_entry_point
from spikelab.plumbing.files import read_npz, write_npz


def main() -> None:
    lines_path, output = sys.argv[1], sys.argv[2]
    params = load_params()
    lines = read_npz(lines_path, ("solid", "broken"), produced_by="generate")
    parts = split(lines["solid"], lines["broken"], params.split)
    write_npz(output, **parts)
    print(f"split: {len(parts['x_train'])} train, {len(parts['x_val'])} validation images -> {output}")


if __name__ == "__main__":
    run_entry_point(main, stage="split")
