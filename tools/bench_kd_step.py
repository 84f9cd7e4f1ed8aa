#!/usr/bin/env python3
"""Times one full-sum KD step (N hypotheses, offline teacher scores) against one hard-KD step.

Same process, same student weights, same batch: the hard step trains on hypothesis 0 of the
batch's N-best, the full-sum step on all N (one encoder pass shared by the N hypotheses). Each
step is a full `LossTermsTrainer.train_step` (front end, forward, backward, clipping, Adam update),
timed as the median of `--repeats` calls after `--warmup` calls that also compile; the steps of
the trainers are interleaved, so that the ratio is fair on a machine shared with other jobs.

The N-best lists matter: the student's joint runs once per distinct (utterance, label prefix) row
(`share_prefixes`, the default without XLA), and beam N-best lists share long prefixes.
- `--hypotheses beam` (default): synthetic lists made the way a beam makes them: a random 1-best of
  `--label_length` ± 3 tokens, and hypotheses 1..N-1 = the 1-best with one or two random edits
  (substitution, insertion or deletion) at random positions;
- `--hypotheses random`: N independent random hypotheses (no shared prefixes; the old bench);
- `--pseudo_labels GLOB`: real N-best lists (token ids, lengths, teacher scores) of `--batch_size`
  utterances drawn (seeded) from `bin/pseudo_label` records; with `--record_audio` their audio
  too (padded to the longest), else synthetic audio of `--seconds`.
Audio is otherwise noise of `--seconds` (lengths 75-100 %). Labels are padded to the static
`--max_label_length` as `gin/data/synthetic_small.gin` pads them; `--label_bucket` trims them as
the KD gin files do. The bench prints the prefix-row ratio of its batch.

With `--soft_teacher_dir DIR` (a trained teacher, e.g. `runs/demo/teacher`; vocabulary
`--vocab_size`), it also times soft-KD steps (`SoftDistillationTrainer`, hypothesis 0, same
student) two ways: `soft_online`, the teacher running on every step, and `soft_offline`, the same
batch with stored soft targets (the teacher's collapsed lattice, made once here as
`bin/pseudo_label --soft_targets` makes it) and no teacher in the trainer.

Usage:
  python tools/bench_kd_step.py --no_jit --label_bucket 16        # the KD gin files' settings
  python tools/bench_kd_step.py --no_jit --label_bucket 16 --student lstm_8x
  python tools/bench_kd_step.py --no_jit --label_bucket 16 --pseudo_labels '/tmp/pl/*.tfrecord'
  python tools/bench_kd_step.py --no_jit --label_bucket 16 --also_lattice   # + old lattice path
  python tools/bench_kd_step.py --quick          # small batch, 3 repeats
  python tools/bench_kd_step.py --no_jit --label_bucket 16 --student study --seconds 3 \
      --label_length 20 --threads 1 --mixed_precision mixed_bfloat16   # the study's student
"""

import argparse
import glob
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfkd import cli  # noqa: E402  (after the path; no TensorFlow)

# Without BFC, this VM page-faults every fresh large buffer in again (README, "CPU allocator").
cli.set_tf_environment()


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--nbest", type=int, default=4, help="hypotheses N of the full-sum step")
    p.add_argument("--seconds", type=float, default=4.0, help="synthetic audio per utterance")
    p.add_argument("--max_label_length", type=int, default=64, help="static U of the batch")
    p.add_argument("--label_length", type=int, default=24, help="tokens per synthetic 1-best")
    p.add_argument("--vocab_size", type=int, default=256)
    p.add_argument("--hypotheses", choices=["beam", "random"], default="beam")
    p.add_argument("--pseudo_labels", default=None, help="glob of pseudo-label records")
    p.add_argument("--record_audio", action="store_true", help="audio from --pseudo_labels too")
    p.add_argument("--seed", type=int, default=0)
    students = ["lstm", "lstm_8x", "conformer_8x", "study", "study_stack", "study_conv1d"]
    p.add_argument("--student", choices=students, default="lstm")
    p.add_argument(
        "--compare_student",
        choices=students,
        default=None,
        help="also time the hard and full-sum steps of this student; print its ratios to --student",
    )
    p.add_argument(
        "--mixed_precision",
        choices=["float32", "mixed_bfloat16", "mixed_float16"],
        default="float32",
        help="Keras dtype policy of the student (as `train.mixed_precision`)",
    )
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
    for step in ("hard", "fullsum"):
        p.add_argument(
            f"--{step}_path",
            choices=["default", "shared", "lattice"],
            default="default",
            help=f"{step} step: shared prefix rows, whole lattices, or the trainer's default",
        )
    p.add_argument(
        "--also_lattice",
        action="store_true",
        help="also time both steps on whole lattices (share_prefixes=False), the old path",
    )
    p.add_argument(
        "--soft_teacher_dir",
        default=None,
        help="a trained teacher's model_dir: also time soft KD online vs offline (stored targets)",
    )
    p.add_argument("--quick", action="store_true", help="batch 4, 2 s, U 32, 3 repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.seconds, args.max_label_length = 4, 2.0, 32
        args.label_length, args.repeats = min(args.label_length, 16), 3
    # Checked before TensorFlow loads (a bad value would fail minutes later, in NumPy or TF).
    for flag, minimum in (
        ("batch_size", 1),
        ("nbest", 1),
        ("max_label_length", 1),
        ("label_length", 1),
        ("vocab_size", 2),  # blank and one label
        ("repeats", 1),
        ("warmup", 0),
        ("threads", 0),
        ("label_bucket", 1),
    ):
        cli.check_at_least(f"--{flag}", getattr(args, flag), minimum)
    if not args.seconds > 0:
        raise cli.UsageError(f"--seconds must be > 0, got {args.seconds}")
    if args.pseudo_labels and not glob.glob(args.pseudo_labels):
        raise cli.UsageError(f"--pseudo_labels={args.pseudo_labels!r} matches no file")
    return args


def _student(kind, vocab):
    from tfkd.models import presets

    if kind == "conformer_8x":  # gin/models/conformer_student_8x.gin
        return presets.low_frame_rate_student(vocab, num_layers=4, dim=144)
    if kind.startswith("study"):  # the student of gin/study/student.gin, from the file
        import gin

        from tfkd import config

        bindings = [f"VOCAB_SIZE = {vocab}"]
        if kind == "study_stack":  # the same with the frame-stacking front end
            bindings.append("conformer_student.frontend = 'stack'")
        if kind == "study_conv1d":  # the same with the 1-D convolution front end
            bindings += [
                "conformer_student.frontend = 'conv1d'",
                "conformer_student.subsampling_filters = 256",
            ]
        gin.clear_config()
        config.parse_gin(["gin/study/student.gin"], bindings)
        return gin.get_configurable("conformer_student")(vocab)
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


def beam_like_nbest(rng, batch, nbest, label_length, max_labels, vocab):
    """`(ids [B, N, U], lengths [B, N])`: a random 1-best and N-1 copies with 1-2 random edits."""
    import numpy as np

    ids = np.zeros((batch, nbest, max_labels), np.int64)
    lengths = np.zeros((batch, nbest), np.int64)
    for b in range(batch):
        best = list(
            rng.integers(
                1, vocab, size=int(np.clip(label_length + rng.integers(-3, 4), 1, max_labels))
            )
        )
        for n in range(nbest):
            hyp = list(best)
            for _ in range(int(rng.integers(1, 3)) if n else 0):
                pos = int(rng.integers(0, len(hyp) + 1))
                edit = rng.choice(["sub", "ins", "del"]) if hyp else "ins"
                if edit == "ins" or pos == len(hyp):
                    hyp.insert(pos, int(rng.integers(1, vocab)))
                elif edit == "sub":
                    hyp[pos] = int(rng.integers(1, vocab))
                else:
                    del hyp[pos]
            hyp = hyp[:max_labels]
            ids[b, n, : len(hyp)], lengths[b, n] = hyp, len(hyp)
    return ids, lengths


def random_nbest(rng, batch, nbest, label_length, max_labels, vocab):
    """`(ids, lengths)`: N independent random hypotheses (no shared prefixes)."""
    import numpy as np

    lengths = np.clip(label_length + rng.integers(-3, 4, size=(batch, nbest)), 1, max_labels)
    ids = rng.integers(1, vocab, size=(batch, nbest, max_labels))
    ids[np.arange(max_labels)[None, None] >= lengths[..., None]] = 0
    return ids, lengths


def record_nbest(pattern, batch, nbest, max_labels, rng):
    """Real N-best lists (and audio) of `batch` utterances drawn from pseudo-label records."""
    import numpy as np
    import tensorflow as tf

    from tfkd.data import records

    files = sorted(glob.glob(pattern))
    if not files:
        raise cli.UsageError(f"no pseudo-label records match {pattern!r}")
    examples = []
    for raw in tf.data.TFRecordDataset(files):
        ex = records.parse_example(raw, with_nbest=True)
        if int(tf.reduce_max(ex["nbest_lengths"])) <= max_labels:
            examples.append({k: v.numpy() for k, v in ex.items()})
    if len(examples) < batch:
        raise cli.UsageError(
            f"{pattern!r} has {len(examples)} utterances with at most {max_labels} labels, fewer "
            f"than --batch_size={batch} (lower it, or raise --max_label_length)"
        )
    picked = [examples[i] for i in rng.choice(len(examples), size=batch, replace=False)]
    ids = np.zeros((batch, nbest, max_labels), np.int64)
    lengths = np.zeros((batch, nbest), np.int64)
    scores = np.full((batch, nbest), -1e30, np.float32)
    for b, ex in enumerate(picked):
        n = min(nbest, len(ex["nbest_lengths"]))
        ids[b, :n, : ex["nbest_token_ids"].shape[1]] = ex["nbest_token_ids"][:n]
        lengths[b, :n], scores[b, :n] = ex["nbest_lengths"][:n], ex["teacher_scores"][:n]
    samples = max(len(ex["waveform"]) for ex in picked)
    waveform = np.zeros((batch, samples), np.float32)
    for b, ex in enumerate(picked):
        waveform[b, : len(ex["waveform"])] = ex["waveform"]
    count = np.array([min(nbest, len(ex["nbest_lengths"])) for ex in picked])
    num_samples = np.array([len(ex["waveform"]) for ex in picked])
    return ids, lengths, scores, count, waveform, num_samples


def prefix_row_stats(ids, lengths, count):
    """Distinct (utterance, prefix) rows vs the rows of N separate and of 1-best lattices."""
    distinct = separate = first = 0
    for b in range(ids.shape[0]):
        prefixes = set()
        for n in range(int(count[b])):
            prefixes.update(tuple(ids[b, n, :u]) for u in range(int(lengths[b, n]) + 1))
            separate += int(lengths[b, n]) + 1
        distinct += len(prefixes)
        first += int(lengths[b, 0]) + 1 if count[b] else 0
    return {
        "distinct_prefix_rows": distinct,
        "rows_of_n_separate_lattices": separate,
        "rows_of_1best_lattice": first,
        "distinct_over_separate": round(distinct / separate, 3),
        "distinct_over_1best": round(distinct / first, 3),
    }


def _batch(args):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(args.seed)
    b, n, u = args.batch_size, args.nbest, args.max_label_length
    samples = int(args.seconds * 16000)
    waveform = rng.normal(size=(b, samples)).astype(np.float32) * 0.1
    num_samples = rng.integers(samples * 3 // 4, samples + 1, size=b)
    count = np.full([b], n)
    scores = -rng.uniform(5, 40, size=(b, n))
    if args.pseudo_labels:
        ids, lengths, scores, count, rec_wave, rec_samples = record_nbest(
            args.pseudo_labels, b, n, u, rng
        )
        if args.record_audio:
            waveform, num_samples = rec_wave, rec_samples
    elif args.hypotheses == "beam":
        ids, lengths = beam_like_nbest(rng, b, n, args.label_length, u, args.vocab_size)
    else:
        ids, lengths = random_nbest(rng, b, n, args.label_length, u, args.vocab_size)
    batch = {
        "waveform": tf.constant(waveform),
        "num_samples": tf.constant(num_samples, tf.int32),
        "token_ids": tf.constant(ids[:, 0], tf.int32),
        "label_length": tf.constant(lengths[:, 0], tf.int32),
        "nbest_token_ids": tf.constant(ids, tf.int32),
        "nbest_lengths": tf.constant(lengths, tf.int32),
        "teacher_scores": tf.constant(scores, tf.float32),
        "nbest_count": tf.constant(count, tf.int32),
    }
    return batch, prefix_row_stats(ids, lengths, count)


def _soft_target_batch(teacher, frontend, batch):
    """`batch` plus stored soft targets, as `bin/pseudo_label --soft_targets` would store them."""
    import numpy as np
    import tensorflow as tf

    from tfkd import pseudo_label

    feats, lengths = frontend(batch["waveform"], batch["num_samples"])
    enc, enc_lengths = teacher.encode(feats, lengths, training=False)
    enc_lengths = tf.cast(enc_lengths, tf.int32)
    hyp, hyp_lengths = batch["nbest_token_ids"][:, 0], batch["nbest_lengths"][:, 0]
    lattice = pseudo_label.make_soft_target_fn(teacher)(enc, enc_lengths, hyp, hyp_lengths)
    lattice = lattice.numpy()
    stored = np.zeros(lattice.shape, np.float32)  # zero padded, as the pipeline batches them
    for b, (t, u) in enumerate(zip(enc_lengths.numpy(), hyp_lengths.numpy(), strict=True)):
        stored[b, :t, : u + 1] = lattice[b, :t, : u + 1]
    return {**batch, "soft_targets": tf.constant(stored), "soft_target_frames": enc_lengths}


def _time_steps(trainers, batch, args, batches=None):
    """Median step time per trainer. The steps are interleaved (one of each per repeat), so a
    change in the machine's load hits every trainer alike and the ratios stay fair. `batches`
    overrides the batch of some trainers."""
    import tensorflow as tf

    batches = batches or {}
    iterators = {
        name: iter(tf.data.Dataset.from_tensors(batches.get(name, batch)).repeat())
        for name in trainers
    }
    for name, trainer in trainers.items():
        for _ in range(args.warmup):
            float(trainer.train_step(iterators[name])["loss"])
    times = {name: [] for name in trainers}
    for _ in range(args.repeats):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            float(trainer.train_step(iterators[name])["loss"])  # float() waits for the step
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), t) for name, t in times.items()}


def _share(path):
    return {
        "default": {},
        "shared": {"share_prefixes": True},
        "lattice": {"share_prefixes": False},
    }[path]


def main(argv=None):
    args = _parse_args(argv)
    import keras
    import tensorflow as tf

    from tfkd.training import distillation

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(0)
    batch, row_stats = _batch(args)
    print("prefix rows: " + json.dumps(row_stats), flush=True)
    # As `train(mixed_precision=...)`: layers take the policy when built; losses stay float32.
    keras.mixed_precision.set_dtype_policy(args.mixed_precision)
    student = _student(args.student, args.vocab_size)
    common = {
        "strategy": tf.distribute.get_strategy(),
        "global_batch_size": args.batch_size,
        "clip_norm": 5.0,
        "jit_compile": not args.no_jit,
        "lean_joint_threshold": args.lean_threshold,
        "label_bucket": args.label_bucket,
    }
    steps = [
        ("hard", distillation.HardDistillationTrainer, {"nbest_size": 1, **_share(args.hard_path)}),
        (
            "fullsum",
            distillation.FullSumDistillationTrainer,
            {"nbest_size": args.nbest, **_share(args.fullsum_path)},
        ),
    ]
    if args.also_lattice:
        for name, cls, kwargs in list(steps):
            steps.append((f"{name}_lattice", cls, {**kwargs, "share_prefixes": False}))
    students = {}
    if args.compare_student:
        other = _student(args.compare_student, args.vocab_size)
        for name, cls, kwargs in list(steps[:2]):
            steps.append((f"{name}@{args.compare_student}", cls, kwargs))
            students[f"{name}@{args.compare_student}"] = other
    batches = {}
    if args.soft_teacher_dir:
        from tfkd import trained_model

        loaded = trained_model.load_trained_model(args.soft_teacher_dir)
        common["frontend"] = loaded.frontend
        soft = {"nbest_size": 1}
        steps.append(
            ("soft_online", distillation.SoftDistillationTrainer, {**soft, "teacher": loaded.model})
        )
        steps.append(("soft_offline", distillation.SoftDistillationTrainer, soft))
        batches["soft_offline"] = _soft_target_batch(loaded.model, loaded.frontend, batch)
    trainers = {}
    for name, cls, kwargs in steps:
        optimizer = keras.optimizers.Adam(1e-4)
        if args.mixed_precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        trainer = cls(students.get(name, student), optimizer, **common, **kwargs)
        trainer.loss_terms(trainer.prepare_batch(batches.get(name, batch)), training=False)
        optimizer.build(trainer.trainable_variables)
        trainers[name] = trainer
    results = {}
    for name, (median, times) in _time_steps(trainers, batch, args, batches).items():
        share = trainers[name].share_prefixes
        results[name] = {
            "median_s": round(median, 4),
            "times_s": [round(t, 4) for t in times],
            "share_prefixes": share,
        }
        print(
            f"{name:16s} step: median {median * 1000:8.1f} ms over {args.repeats} "
            f"(share_prefixes={share})",
            flush=True,
        )
    ratio = results["fullsum"]["median_s"] / results["hard"]["median_s"]
    params = sum(int(tf.size(v)) for v in student.trainable_variables)
    summary = {
        "args": {k: v for k, v in vars(args).items()},
        "student_parameters": params,
        "prefix_rows": row_stats,
        **results,
        "ratio_fullsum_over_hard": round(ratio, 3),
        "target": 1.6,
    }
    if args.also_lattice:
        summary["ratio_lattice_fullsum_over_lattice_hard"] = round(
            results["fullsum_lattice"]["median_s"] / results["hard_lattice"]["median_s"], 3
        )
        summary["ratio_fullsum_over_fastest_hard"] = round(
            results["fullsum"]["median_s"]
            / min(results["hard"]["median_s"], results["hard_lattice"]["median_s"]),
            3,
        )
    if args.compare_student:
        for name in ("hard", "fullsum"):
            other = f"{name}@{args.compare_student}"
            summary[f"ratio_{other}_over_{name}"] = round(
                results[other]["median_s"] / results[name]["median_s"], 3
            )
        summary["compare_student_parameters"] = sum(
            int(tf.size(v)) for v in students[f"hard@{args.compare_student}"].trainable_variables
        )
    if args.soft_teacher_dir:
        summary["ratio_soft_online_over_offline"] = round(
            results["soft_online"]["median_s"] / results["soft_offline"]["median_s"], 3
        )
        summary["steps_per_s"] = {k: round(1 / v["median_s"], 2) for k, v in results.items()}
    print(json.dumps(summary, indent=1))
    print(f"full-sum (N={args.nbest}) / hard step time: {ratio:.2f}x (target <= 1.6x)")
    return 0


if __name__ == "__main__":
    # Bad flags, missing records or teacher: one message, exit code 2.
    sys.exit(cli.run(main, "tools/bench_kd_step.py"))
