"""Pseudo-labels a split with a trained teacher: N-best + full-sum teacher scores into TFRecords.

    bin/pseudo_label --teacher_dir=runs/teacher --output_dir=data/pseudo/teacher
    bin/pseudo_label --teacher_dir=runs/teacher --gin_file=gin/teacher.gin \\
        --input_pattern='data/records/train-unlabeled-*.tfrecord' --output_dir=data/pseudo/noisy \\
        --beam_width=8 --nbest=4 --noise_rate=0.2 --seed=1
    bin/pseudo_label --teacher_dir=runs/teacher --output_dir=data/pseudo-soft --soft_targets

The teacher, its front end (the one bound to its trainer) and the SentencePiece model come from
TEACHER_DIR/operative_config.gin (or --gin_file/--gin_bindings) and the latest checkpoint
(`tfkd.trained_model.load_trained_model`). Input records default to what the configuration names
for `train-unlabeled` (a TRAIN_UNLABELED_RECORDS macro), else train-unlabeled-*.tfrecord next to
the run's other records. Rerunning skips finished output shards. OUTPUT_DIR/manifest.json gets the
teacher's WER on the split. With --soft_targets every record also stores the teacher's collapsed
lattice log-posteriors on its (stored, possibly corrupted) 1-best, `[T, U+1, 3]` floats
(`soft/log_probs`, `soft/num_frames`; about 12·T·(U+1) bytes), for offline soft distillation
(`gin/soft_kd_offline.gin`); the manifest then names `teacher_reduction_factor`.

Installed, the command is `tfkd-pseudo-label` (same flags); in a clone, `bin/pseudo_label`.
"""

import argparse
import dataclasses
import json
import logging
import os

# tfkd.cli imports no TensorFlow: flags are checked before the slow imports.
from tfkd import cli
from tfkd.cli import UsageError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher_dir", required=True)
    parser.add_argument("--gin_file", action="append", default=[], help="repeatable")
    parser.add_argument("--gin_bindings", action="append", default=[], help="repeatable")
    parser.add_argument("--input_pattern", default=None)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--beam_width", type=int, default=8)
    parser.add_argument("--nbest", type=int, default=4)
    parser.add_argument("--noise_rate", type=float, default=0.0, help="word-piece error rate")
    parser.add_argument("--seed", type=int, default=0, help="label-noise seed")
    parser.add_argument(
        "--soft_targets",
        action="store_true",
        help="also store the teacher's collapsed lattice log-probs on the 1-best (offline soft KD)",
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_symbols_per_frame", type=int, default=3)
    parser.add_argument("--spm_model", default=None, help="default: the run's (for the WER)")
    parser.add_argument("--checkpoint", default=None, help="default: latest in --teacher_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
    log = logging.getLogger("tfkd.pseudo_label")

    from tfkd import pseudo_label, trained_model

    # Built before the teacher so that bad settings fail fast.
    settings = pseudo_label.Settings(
        beam_width=args.beam_width,
        nbest=args.nbest,
        max_symbols_per_frame=args.max_symbols_per_frame,
        noise_rate=args.noise_rate,
        seed=args.seed,
        soft_targets=args.soft_targets,
    )
    teacher = trained_model.load_trained_model(
        args.teacher_dir, args.gin_file, args.gin_bindings, args.checkpoint, args.spm_model
    )
    log.info("restored teacher %s (step %d)", teacher.checkpoint, teacher.step)
    if not args.input_pattern:
        try:
            args.input_pattern = teacher.record_pattern("train-unlabeled")
        except FileNotFoundError as e:
            raise UsageError(f"{e} (--input_pattern)") from None
    if teacher.tokenizer is None:
        log.warning("no SentencePiece model (--spm_model): the manifest has token error rates")
    # A new checkpoint invalidates finished shards.
    settings = dataclasses.replace(settings, teacher=os.path.abspath(teacher.checkpoint))
    manifest = pseudo_label.pseudo_label(
        teacher.model,
        args.input_pattern,
        args.output_dir,
        settings,
        frontend=teacher.frontend,
        batch_size=args.batch_size,
        ids_to_text=teacher.tokenizer.decode if teacher.tokenizer else None,
    )
    summary = {k: v for k, v in manifest.items() if k != "shards"}
    print(json.dumps(summary, indent=1, sort_keys=True))
    return 0


def console_main() -> int:
    """The `tfkd-pseudo-label` console script."""
    return cli.run_command(main, "tfkd-pseudo-label")
