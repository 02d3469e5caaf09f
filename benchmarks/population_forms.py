"""Forms of a population's training step: CPU milliseconds per member-step, taking turns.

    python -m benchmarks.population_forms [--sizes 1 5 20 40] [--rounds 3]

The bare step of the default model (8 filters, 16x16 kernels, batch 32, clipped cross-entropy,
Adam) for P members with stacked weights, 8 steps per call, in these forms:
- products: the engine's (study/population_engine.StackedNetwork): each member its own batch, the
  first convolution in row form and the second in dense form, batched matrix products;
- grouped: the engine's network with both convolutions grouped (member p's images in input channel
  p, its filters in group p), the form it takes where the products would be mostly zeros;
- depthwise: the first convolution as a depthwise one (channel multiplier 8) instead;
- matmul: both convolutions as image patches times batched matrices (im2col);
- grouped_xla: the grouped form compiled by XLA;
- shared: every member sees the same batch (the first convolution then is one ordinary convolution
  with P x 8 filters): what a shared batch order would save, though its members are no longer the
  single runs of their seeds.
Prints CPU and wall milliseconds per member-step, one line per form and P (the median round), and
writes them to benchmarks/results.json (`population_forms`, or `population_forms_threads_N` with
--threads N). On a shared machine only the CPU figures compare.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from spikelab.model import build_model
from spikelab.params import ModelParams
from study.population_engine import StackedNetwork, _grouped

BATCH, KERNEL, FILTERS, STEPS = 32, 16, 8, 16
ENGINE = ("products", "grouped")


def forms(size: int):
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 255, (2048, 32, 32), dtype=np.uint8))
    labels = tf.constant(np.eye(2, dtype=np.float32)[rng.integers(0, 2, 2048)])
    shapes = [
        (size, KERNEL, KERNEL, 1, FILTERS),
        (size, FILTERS),
        (size, KERNEL, KERNEL, FILTERS, 2 * FILTERS),
        (size, 2 * FILTERS),
        (size, 2 * FILTERS, 2),
        (size, 2),
    ]
    weights = [tf.Variable(rng.standard_normal(shape).astype(np.float32) * 0.05) for shape in shapes]
    template = build_model(
        ModelParams(filters=FILTERS, kernel_size=KERNEL, data_format="channels_last", hidden_activation="none"),
        32,
        "channels_last",
    )
    members = [[np.asarray(w[index]) for w in weights] for index in range(size)]
    networks = {name: StackedNetwork(template, members, hidden_relu=False, image_size=32) for name in ENGINE}
    networks["grouped"].row_form = networks["grouped"].dense_form = False

    def head(h):
        h = tf.nn.max_pool2d(h, 2, 2, "VALID")
        batch = tf.shape(h)[0]
        h = tf.reshape(tf.transpose(tf.reshape(h, [batch, 1, 1, size, -1]), [3, 0, 1, 2, 4]), [size, batch, -1])
        return tf.einsum("pbi,pio->pbo", h, weights[4]) + weights[5][:, None, :]

    def second(h):
        return head(tf.nn.conv2d(h, _grouped(weights[2]), 1, "VALID") + tf.reshape(weights[3], [-1]))

    def engine(name):
        return lambda x: networks[name].logits(tf.transpose(x, [1, 2, 3, 0]))

    def depthwise(x):
        x = tf.transpose(x, [1, 2, 3, 0])
        kernel = tf.transpose(weights[0][:, :, :, 0, :], [1, 2, 0, 3])
        h = tf.nn.depthwise_conv2d(tf.nn.relu(x), kernel, [1, 1, 1, 1], "VALID")
        return second(h + tf.reshape(weights[1], [-1]))

    def shared(x):
        return engine("grouped")(x[:1])  # one set of images: an ordinary convolution with P x 8 filters

    def patches(x, channels):
        found = tf.image.extract_patches(x, [1, KERNEL, KERNEL, 1], [1, 1, 1, 1], [1, 1, 1, 1], "VALID")
        side = found.shape[1]
        return tf.reshape(found, [size, -1, KERNEL * KERNEL * channels]), side

    def matmul(x):
        p1, side = patches(tf.reshape(tf.nn.relu(x), [size * BATCH, 32, 32, 1]), 1)
        h = tf.matmul(p1, tf.reshape(weights[0], [size, -1, FILTERS])) + weights[1][:, None, :]
        p2, _ = patches(tf.reshape(h, [size * BATCH, side, side, FILTERS]), FILTERS)
        h = tf.matmul(p2, tf.reshape(weights[2], [size, -1, 2 * FILTERS])) + weights[3][:, None, :]
        h = tf.reduce_max(tf.reshape(h, [size, BATCH, -1, 2 * FILTERS]), axis=2)
        return tf.einsum("pbi,pio->pbo", h, weights[4]) + weights[5][:, None, :]

    def loss_of(logits, y):
        p = tf.clip_by_value(tf.nn.softmax(logits), 1e-7, 1 - 1e-7)
        return tf.reduce_sum(tf.reduce_mean(-tf.reduce_mean(y * tf.math.log(p) + (1 - y) * tf.math.log(1 - p), -1), 1))

    def make(forward, jit=False, variables=None):
        variables = variables or weights
        optimizer = keras.optimizers.Adam(3e-3)
        optimizer.build(variables)

        def steps(indices):
            loss = tf.constant(0.0)
            for step in tf.range(tf.shape(indices)[0]):
                batch = indices[step]
                x = tf.cast(tf.gather(images, batch), tf.float32) / 255.0
                with tf.GradientTape() as tape:
                    loss = loss_of(forward(x), tf.gather(labels, batch))
                optimizer.apply(tape.gradient(loss, variables), variables)
            return loss

        return tf.function(steps, jit_compile=jit)

    indices = tf.constant(rng.integers(0, 2048, (STEPS, size, BATCH)).astype(np.int32))
    built = {
        **{name: make(engine(name), variables=networks[name].variables) for name in ENGINE},
        "depthwise": make(depthwise),
        "matmul": make(matmul),
        "grouped_xla": make(engine("grouped"), jit=True, variables=networks["grouped"].variables),
        "shared": make(shared, variables=networks["grouped"].variables),
    }
    return built, indices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.population_forms", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 20, 40])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forms", nargs="+", help="only these forms (default: every one)")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow's intra-op threads (0: its default)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results.json"))
    args = parser.parse_args(argv)
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    figures: dict[str, dict] = {}
    for size in args.sizes:
        built, indices = forms(size)
        built = {name: step for name, step in built.items() if not args.forms or name in args.forms}
        for step in built.values():
            step(indices)  # trace
        found = {name: [] for name in built}
        for _ in range(args.rounds):
            for name, step in built.items():
                started, wall = time.process_time(), time.perf_counter()
                step(indices).numpy()
                per_step = STEPS * size / 1000
                found[name].append(
                    ((time.process_time() - started) / per_step, (time.perf_counter() - wall) / per_step)
                )
        for name, values in found.items():
            cpu, wall = statistics.median(v[0] for v in values), statistics.median(v[1] for v in values)
            figures.setdefault(str(size), {})[name] = {"cpu_ms_per_member_step": cpu, "wall_ms_per_member_step": wall}
            print(f"P={size} {name}: {cpu:.2f} CPU ms ({wall:.2f} wall) per member-step", flush=True)
    from benchmarks.machine import machine
    from benchmarks.results_file import update_results

    dated = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine()}
    note = f"the bare step, {STEPS} steps per call, median of {args.rounds} rounds taking turns"
    key = "population_forms" + (f"_threads_{args.threads}" if args.threads else "")
    update_results(args.output, {key: dated | {"note": note, "threads": args.threads or None, "by_size": figures}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
