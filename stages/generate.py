"""Stage generate: params data -> data/lines.npz (solid and broken stacks, uint8, and gap sizes)."""
import time

from spikelab.cli import run_stage
from spikelab.data import generate
from spikelab.files import write_npz
from spikelab.params import load_params

OUTPUT = "data/lines.npz"


def main() -> None:
    params = load_params()
    started = time.perf_counter()
    solid, broken, gaps = generate(params.data)
    write_npz(OUTPUT, solid=solid, broken=broken, gaps=gaps)
    print(f"generate: {len(solid)} solid + {len(broken)} broken {solid.shape[1]}x{solid.shape[2]} images "
          f"-> {OUTPUT} ({time.perf_counter() - started:.1f}s)")


if __name__ == "__main__":
    run_stage(main)
