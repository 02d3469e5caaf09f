"""What bounds the fraction of peak: the seed's conv2, as a convolution and as one matrix product.

    python -m benchmarks.conv2_forms [--filters 8 64] [--batch 32] [--repeats 20]

conv2 (2f filters, 16x16 kernel, valid padding) on conv1's 17x17 output leaves a 2x2 map: each of
the 4 outputs is one window of 16x16xf inputs times the same weights. Stacking the 4 windows turns
it into one product (4 x batch, 16*16*f) @ (16*16*f, 2f): the same function up to the order of
the sums. Both forms are timed forward + both gradients (inputs and weights, as in training),
channels_last, op determinism on, medians of --repeats calls of one traced graph each; FLOP/s
counts 3 x the forward's 2 FLOPs per MAC, as `make bench` does. Prints the figures and the largest
difference between the two forms' gradients (relative to the largest gradient), which shows they
compute the same thing. Writes nothing: the lab's model keeps Conv2D (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import tensorflow as tf

KERNEL, INPUT = 16, 17  # the seed's kernel size, and conv1's output size on 32x32 images
OUTPUT = INPUT - KERNEL + 1


def as_convolution(x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    return tf.nn.conv2d(x, w, strides=1, padding="VALID")


def as_matrix_product(x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """The 4 windows stacked into rows, times the kernel flattened into a (16*16*f, 2f) matrix."""
    batch = tf.shape(x)[0]
    windows = [
        tf.reshape(x[:, i : i + KERNEL, j : j + KERNEL, :], (batch, -1)) for i in range(OUTPUT) for j in range(OUTPUT)
    ]
    return tf.matmul(tf.concat(windows, axis=0), tf.reshape(w, (-1, w.shape[-1])))


def gradients_of(form):
    """A traced graph: the form's forward pass and the gradients of a scalar of it for x and w."""

    @tf.function
    def run(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = form(x, w)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x, w])

    return run


def median_seconds(run, x, w, repeats: int) -> float:
    run(x, w)  # tracing
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        for tensor in run(x, w):
            tensor.numpy()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", type=int, nargs="+", default=[8, 64], help="conv1's filters (conv2 has twice)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    tf.config.experimental.enable_op_determinism()
    tf.random.set_seed(0)
    print(f"{'filters':>8} {'form':<16} {'ms':>8} {'GFLOP/s':>9}   max gradient difference")
    for filters in args.filters:
        x = tf.random.normal((args.batch, INPUT, INPUT, filters))
        w = tf.random.normal((KERNEL, KERNEL, filters, 2 * filters)) * 0.01
        flops = 3 * 2 * args.batch * OUTPUT * OUTPUT * KERNEL * KERNEL * filters * 2 * filters
        forms = {"convolution": gradients_of(as_convolution), "matrix product": gradients_of(as_matrix_product)}
        reference, other = (run(x, w) for run in forms.values())
        difference = max(
            float(tf.reduce_max(tf.abs(a - b)) / tf.reduce_max(tf.abs(a))) for a, b in zip(reference, other)
        )
        for name, run in forms.items():
            seconds = median_seconds(run, x, w, args.repeats)
            print(f"{filters:>8} {name:<16} {seconds * 1000:>8.2f} {flops / seconds / 1e9:>9.3g}   {difference:.1e}")


if __name__ == "__main__":
    main()
