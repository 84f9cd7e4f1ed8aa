#!/usr/bin/env python3
"""Times one full-sum KD step (N hypotheses, offline teacher scores) against one hard-KD step.

Same process, same student weights, same batch: the hard step trains on hypothesis 0 of the
batch's N-best, the full-sum step on all N (one encoder pass shared by the N hypotheses). Each
step is a full `LossTermsTrainer.train_step` (front end, forward, backward, clipping, Adam update),
timed as the median of `--repeats` calls after `--warmup` calls that also compile. The batch is
synthetic (noise audio, random hypotheses) with static shapes as `gin/data/synthetic_small.gin`
pads them: U is `--max_label_length`, real hypotheses are `--label_length` tokens.

Usage:
  python tools/bench_kd_step.py                  # the main job's student and shapes, N = 4
  python tools/bench_kd_step.py --quick          # small batch, 3 repeats
  python tools/bench_kd_step.py --batch_size 8 --nbest 4 --seconds 4 --student conformer_8x
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--nbest", type=int, default=4, help="hypotheses N of the full-sum step")
    p.add_argument("--seconds", type=float, default=4.0, help="audio per utterance")
    p.add_argument("--max_label_length", type=int, default=64, help="static U of the batch")
    p.add_argument("--label_length", type=int, default=24, help="tokens per hypothesis")
    p.add_argument("--vocab_size", type=int, default=256)
    p.add_argument("--student", choices=["lstm", "lstm_8x", "conformer_8x"], default="lstm")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="TF intra-op threads (0: TF default)")
    p.add_argument("--no_jit", action="store_true", help="run the steps without XLA")
    p.add_argument(
        "--lean_threshold", type=int, default=2**24, help="lean joint path above this many logits"
    )
    p.add_argument(
        "--label_bucket", type=int, default=None, help="trim padded labels to a multiple of this"
    )
    p.add_argument("--quick", action="store_true", help="batch 4, 2 s, U 32, 3 repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.seconds, args.max_label_length = 4, 2.0, 32
        args.label_length, args.repeats = min(args.label_length, 16), 3
    return args


def _student(kind, vocab):
    from tfkd.models import presets

    if kind == "conformer_8x":  # gin/models/conformer_student_8x.gin
        return presets.low_frame_rate_student(vocab, num_layers=4, dim=144)
    # gin/models/lstm_student.gin (and its 8x variant)
    return presets.lstm_student(
        vocab,
        num_layers=2,
        units=256,
        subsampling_factor=8 if kind == "lstm_8x" else 4,
        frontend_units=256,
        prediction_units=192,
        prediction_embed_dim=96,
        joint_dim=192,
        dropout=0.1,
    )


def _batch(args):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    b, n, u = args.batch_size, args.nbest, args.max_label_length
    samples = int(args.seconds * 16000)
    lengths = np.clip(
        args.label_length + rng.integers(-3, 4, size=(b, n)), 1, args.max_label_length
    )
    hyps = rng.integers(1, args.vocab_size, size=(b, n, u))
    hyps[np.arange(u)[None, None] >= lengths[..., None]] = 0
    return {
        "waveform": tf.constant(rng.normal(size=(b, samples)).astype(np.float32) * 0.1),
        "num_samples": tf.constant(rng.integers(samples * 3 // 4, samples + 1, size=b), tf.int32),
        "token_ids": tf.constant(hyps[:, 0], tf.int32),
        "label_length": tf.constant(lengths[:, 0], tf.int32),
        "nbest_token_ids": tf.constant(hyps, tf.int32),
        "nbest_lengths": tf.constant(lengths, tf.int32),
        "teacher_scores": tf.constant(-rng.uniform(5, 40, size=(b, n)), tf.float32),
        "nbest_count": tf.fill([b], n),
    }


def _time_steps(trainer, batch, args):
    import tensorflow as tf

    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    for _ in range(args.warmup):
        float(trainer.train_step(iterator)["loss"])
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        float(trainer.train_step(iterator)["loss"])  # float() waits for the step to finish
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main(argv=None):
    args = _parse_args(argv)
    import keras
    import tensorflow as tf

    from tfkd.training import distillation

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(0)
    batch = _batch(args)
    student = _student(args.student, args.vocab_size)
    common = {
        "strategy": tf.distribute.get_strategy(),
        "global_batch_size": args.batch_size,
        "clip_norm": 5.0,
        "jit_compile": not args.no_jit,
        "lean_joint_threshold": args.lean_threshold,
        "label_bucket": args.label_bucket,
    }
    results = {}
    for name, cls, kwargs in (
        ("hard", distillation.HardDistillationTrainer, {"nbest_size": 1}),
        ("fullsum", distillation.FullSumDistillationTrainer, {"nbest_size": args.nbest}),
    ):
        optimizer = keras.optimizers.Adam(1e-4)
        trainer = cls(student, optimizer, **common, **kwargs)
        trainer.loss_terms(batch, training=False)
        optimizer.build(trainer.trainable_variables)
        median, times = _time_steps(trainer, batch, args)
        results[name] = {"median_s": round(median, 4), "times_s": [round(t, 4) for t in times]}
        print(f"{name:8s} step: median {median * 1000:8.1f} ms over {args.repeats}", flush=True)
    ratio = results["fullsum"]["median_s"] / results["hard"]["median_s"]
    params = sum(int(tf.size(v)) for v in student.trainable_variables)
    summary = {
        "args": {k: v for k, v in vars(args).items()},
        "student_parameters": params,
        "hard": results["hard"],
        "fullsum": results["fullsum"],
        "ratio_fullsum_over_hard": round(ratio, 3),
        "target": 1.6,
    }
    print(json.dumps(summary, indent=1))
    print(f"full-sum (N={args.nbest}) / hard step time: {ratio:.2f}x (target <= 1.6x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
