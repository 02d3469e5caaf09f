"""The seed's data: images of solid line segments and their "broken" twins, and the split.

An image is image_size x image_size, one channel, uint8 (0 background, 255 line). The broken
twin is the same image with `gap` consecutive pixels of its line set back to 0.
"""

from __future__ import annotations

import numpy as np

from spikelab.params import DataParams, SplitParams


def line_pixels(x0: float, y0: float, angle: float, length: int) -> np.ndarray:
    """Ordered, de-duplicated (row, col) pixels of a segment: (n, 2) int array."""
    steps = np.arange(4 * length) / 4.0  # 4 samples a pixel so no pixel is skipped
    rows = np.rint(y0 + steps * np.sin(angle)).astype(np.int64)
    cols = np.rint(x0 + steps * np.cos(angle)).astype(np.int64)
    points = np.stack([rows, cols], axis=1)
    keep = np.ones(len(points), dtype=bool)
    keep[1:] = np.any(points[1:] != points[:-1], axis=1)
    return points[keep]


def _random_segment(rng: np.random.Generator, p: DataParams) -> np.ndarray:
    """A segment that lies fully inside the image, with at least length_min pixels."""
    while True:
        length = int(rng.integers(p.length_min, p.length_max + 1))
        angle = rng.uniform(0, 2 * np.pi)
        x0, y0 = rng.uniform(0, p.image_size - 1, size=2)
        pixels = line_pixels(x0, y0, angle, length)
        inside = np.all((pixels >= 0) & (pixels < p.image_size))
        if inside and len(pixels) >= p.length_min:
            return pixels


def generate(p: DataParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(solid, broken, gaps): two (per_class, size, size) uint8 stacks and each image's gap size."""
    rng = np.random.default_rng(p.seed)
    solid = np.zeros((p.per_class, p.image_size, p.image_size), dtype=np.uint8)
    broken = np.zeros_like(solid)
    gaps = np.zeros(p.per_class, dtype=np.int16)
    for index in range(p.per_class):
        pixels = _random_segment(rng, p)
        gap = int(rng.integers(p.gap_min, p.gap_max + 1))
        # the gap never touches either end, so the broken line visibly has two pieces
        start = int(rng.integers(1, len(pixels) - gap))
        solid[index, pixels[:, 0], pixels[:, 1]] = 255
        broken[index] = solid[index]
        hole = pixels[start : start + gap]
        broken[index, hole[:, 0], hole[:, 1]] = 0
        gaps[index] = gap
    return solid, broken, gaps


def split(solid: np.ndarray, broken: np.ndarray, p: SplitParams) -> dict[str, np.ndarray]:
    """Shuffle both stacks (seeded), hold out val_per_class of each; one-hot labels.

    solid = [1, 0], broken = [0, 1], as in the seed. Returns x_train, y_train, x_val, y_val
    with images still uint8 (n, size, size); each set is shuffled across the two classes.
    """
    rng = np.random.default_rng(p.seed)
    solid_order = rng.permutation(len(solid))
    # independent (the seed's): the broken stack has its own order, so a training image's broken
    # twin often sits in validation; together: one order for both, twins stay on the same side
    broken_order = solid_order if p.twins == "together" else rng.permutation(len(broken))
    solid, broken = solid[solid_order], broken[broken_order]
    held = p.val_per_class
    parts = {}
    for name, images in (("train", (solid[held:], broken[held:])), ("val", (solid[:held], broken[:held]))):
        x = np.concatenate(images)
        labels = np.concatenate([np.zeros(len(images[0]), np.int64), np.ones(len(images[1]), np.int64)])
        order = rng.permutation(len(x))
        parts[f"x_{name}"] = x[order]
        parts[f"y_{name}"] = np.eye(2, dtype=np.float32)[labels[order]]
    return parts
