"""Stage split: data/lines.npz -> data/split.npz (shuffled, val_per_class held out, one-hot labels)."""
from spikelab.cli import run_stage
from spikelab.data import split
from spikelab.files import read_npz, write_npz
from spikelab.params import load_params

INPUT = "data/lines.npz"
OUTPUT = "data/split.npz"


def main() -> None:
    params = load_params()
    lines = read_npz(INPUT, ("solid", "broken"), produced_by="generate")
    parts = split(lines["solid"], lines["broken"], params.split)
    write_npz(OUTPUT, **parts)
    print(f"split: {len(parts['x_train'])} train, {len(parts['x_val'])} validation images -> {OUTPUT}")


if __name__ == "__main__":
    run_stage(main)
