"""Stage generate: params `data` -> <lines.npz> (solid and broken stacks, uint8, and gap sizes).

python -m stages.generate data/lines.npz
"""

import sys
import time

from spikelab.data import generate
from spikelab.params import load_params
from spikelab.plumbing.errors import run_entry_point
from spikelab.plumbing.files import write_npz


def main() -> None:
    output = sys.argv[1]
    params = load_params()
    started = time.perf_counter()
    solid, broken, gaps = generate(params.data)
    write_npz(output, solid=solid, broken=broken, gaps=gaps)
    print(
        f"generate: {len(solid)} solid + {len(broken)} broken {solid.shape[1]}x{solid.shape[2]} images "
        f"-> {output} ({time.perf_counter() - started:.1f}s)"
    )


if __name__ == "__main__":
    run_entry_point(main, stage="generate")
