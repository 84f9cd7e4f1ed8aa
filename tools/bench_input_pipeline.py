#!/usr/bin/env python3
"""Times the training input pipeline with deterministic reading against the default.

`train_data/make_dataset.deterministic = True` (the study's students and teachers, and so
make demo's students) makes parallel reads keep file order, so that one seed gives one batch
order; the default lets reads arrive as they finish. This bench reads `--batches` batches of the
demo's training data (train-labeled and its respoken renditions: shuffled, bucketed, padded to
static shapes, log-mel features not included) both ways, alternating `--repeats` times in one
process, and prints the median batches per second of each and their ratio. A training step of
make demo's students takes about 150 ms on the slower machine type (6-7 steps/s), so reading
matters only if it comes near that rate.

Usage:
  python tools/bench_input_pipeline.py [--data data] [--batches 300] [--repeats 3]
"""

import argparse
import glob
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfkd import cli  # noqa: E402  (after the path; no TensorFlow)

cli.set_tf_environment()


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data", help="make demo's data directory")
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=16)
    args = p.parse_args(argv)
    for name in ("batches", "repeats", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def _patterns(data):
    records = os.path.join(data, "records")
    patterns = [os.path.join(records, f"train-{s}-*.tfrecord") for s in ("labeled", "respoken")]
    missing = [p for p in patterns if not glob.glob(p)]
    if missing:
        raise SystemExit(
            f"no records match {missing[0]}: make them with make demo's data stages "
            "(python tools/run_demo.py --only records, then --only respoken)"
        )
    return patterns


def _batches_per_second(patterns, deterministic, args):
    from tfkd.data import pipeline

    ds = pipeline.make_dataset(
        patterns,
        global_batch_size=args.batch_size,
        shuffle=True,
        seed=0,
        repeat=True,
        max_duration_s=8.0,
        max_label_length=64,
        static_shapes=True,
        bucket_boundaries=[2.5, 4.0, 5.5],
        deterministic=deterministic,
    )
    it = iter(ds.take(args.batches + 10))
    for _ in range(10):  # warm up: open files, fill the shuffle buffer
        next(it)
    start = time.perf_counter()
    for _ in range(args.batches):
        next(it)
    return args.batches / (time.perf_counter() - start)


def main(argv=None) -> int:
    args = _parse_args(argv)
    patterns = _patterns(args.data)
    rates = {False: [], True: []}
    for _ in range(args.repeats):
        for deterministic in (False, True):
            rates[deterministic].append(_batches_per_second(patterns, deterministic, args))
    default, ordered = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"batches of {args.batch_size}, median of {args.repeats} x {args.batches} batches:")
    print(f"  default (arrival order)   {default:8.1f} batches/s")
    print(f"  deterministic (file order) {ordered:7.1f} batches/s")
    print(f"  ratio deterministic / default: {ordered / default:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "tools/bench_input_pipeline.py"))
