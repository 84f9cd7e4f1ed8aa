"""Checks, before a run builds anything, that the inputs its gin configuration names exist.

A missing corpus, SentencePiece model, teacher checkpoint or pseudo-label set is reported with the
command that makes it, in pipeline order (the first missing step first), instead of a stack trace
from deep inside the run. Reads the gin macros of `gin/data/*.gin` and the distillation configs.
"""

from __future__ import annotations

import gin
import tensorflow as tf

MAKE_DATA = (
    "python tools/make_corpus.py --size small corpus\n"
    "  python tools/train_spm.py corpus/train-labeled --vocab_size 256 "
    "--output_prefix data/spm/spm\n"
    "  for split in train-labeled train-unlabeled dev test; do python "
    "tools/prepare_librispeech.py corpus/$split data/records --spm_model data/spm/spm.model; done"
)
MAKE_TEACHER = "bin/train --gin_file=gin/teacher.gin --model_dir={teacher_dir}"
MAKE_PSEUDO_LABELS = "bin/pseudo_label --teacher_dir={teacher_dir} --output_dir={output_dir}"


def _macro(name):
    try:
        value = gin.query_parameter(f"%{name}")
    except ValueError:
        return None
    # A macro bound to another macro (`LABELED_RECORDS = %TRAIN_RECORDS`): follow it.
    if isinstance(value, gin.config.ConfigurableReference) and value.selector == "gin.macro":
        return _macro(value.scoped_selector.split("/")[0])
    return value


def missing_inputs(default_teacher_dir: str = "runs/teacher") -> str | None:
    """Host: a message naming the first missing input and its command, or None if all exist.

    Looks at the macros SPM_MODEL, TRAIN_RECORDS (or LABELED_RECORDS), DEV_RECORDS, TEACHER_DIR
    and PSEUDO_LABEL_RECORDS of the parsed gin configuration; unset macros are not checked.
    With `SOFT_TARGETS = True` (gin/soft_kd_offline.gin) the pseudo-label command gets
    `--soft_targets`.
    PSEUDO_LABEL_DEV_RECORDS is optional: without it, training reports dev WER alone
    (`tfkd.training.periodic_eval.WerEvaluator`).
    """
    pseudo = _macro("PSEUDO_LABEL_RECORDS")
    # A distillation run trains on pseudo-labels: the labelled training split is not read, unless
    # gin/data/mixed_labeled.gin mixes LABELED_RECORDS in.
    names = (
        ("SPM_MODEL", "LABELED_RECORDS", "DEV_RECORDS")
        if pseudo
        else ("SPM_MODEL", "TRAIN_RECORDS", "DEV_RECORDS")
    )
    for name in names:
        value = _macro(name)
        if isinstance(value, str) and value and not tf.io.gfile.glob(value):
            hint = "Make the corpus and records with:\n  " + MAKE_DATA
            return f"{name} = {value!r} matches nothing. {hint}"
    teacher_dir = _macro("TEACHER_DIR")
    if isinstance(teacher_dir, str) and not tf.train.latest_checkpoint(teacher_dir):
        return (
            f"no teacher checkpoint in {teacher_dir!r}. Train it with:\n  "
            + MAKE_TEACHER.format(teacher_dir=teacher_dir)
        )
    if isinstance(pseudo, str) and pseudo and not tf.io.gfile.glob(pseudo):
        teacher_dir = teacher_dir or default_teacher_dir
        steps = []
        if not tf.train.latest_checkpoint(teacher_dir):
            steps.append(MAKE_TEACHER.format(teacher_dir=teacher_dir))
        output_dir = pseudo.rsplit("/", 1)[0] if "/" in pseudo else "."
        command = MAKE_PSEUDO_LABELS.format(teacher_dir=teacher_dir, output_dir=output_dir)
        steps.append(command + (" --soft_targets" if _macro("SOFT_TARGETS") is True else ""))
        return f"no pseudo-label records match {pseudo!r}. Make them with:\n  " + "\n  ".join(steps)
    return None
