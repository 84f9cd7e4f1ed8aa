"""The batch contract of the distillation trainers: N-best fields and pseudo-label data.

Offline distillation reads `bin/pseudo_label` records through `make_dataset(with_nbest=True)`;
an online teacher fills the same fields in (`tfkd.training.distillation`). Per-replica helpers
here cut those fields without touching their meaning (`tfkd.training.trainers.trim_labels`
trims them).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from tfkd.data import pipeline

#: Batch fields of an N-best list, as `tfkd.data.pipeline.make_dataset(with_nbest=True)` yields.
NBEST_FIELDS = ("nbest_token_ids", "nbest_lengths", "teacher_scores", "nbest_count")
#: Batch field that marks labelled examples for the `rnnt_gt` term.
LABELED = "labeled"
#: How the built-in corpus's pseudo-label records are made (named when they are missing).
PSEUDO_LABEL_COMMAND = (
    "bin/train --gin_file=gin/teacher.gin --model_dir=runs/teacher   # if there is no teacher\n"
    "  bin/pseudo_label --teacher_dir=runs/teacher --output_dir=data/pseudo"
)


def pseudo_label_dataset(
    *,
    file_pattern: str,
    dataset_fn: Callable[..., tf.data.Dataset] = pipeline.make_dataset,
    command: str = PSEUDO_LABEL_COMMAND,
    **kwargs,
) -> tf.data.Dataset:
    """Host: `dataset_fn(file_pattern, with_nbest=True, **kwargs)` over pseudo-label records.

    Args:
        file_pattern: records written by `bin/pseudo_label` (with `nbest/*` fields).
        dataset_fn: the batching pipeline (gin: `@train_data/make_dataset`, so that its other
            bindings apply).
        command: how to make the records, named in the error when none exist.
        **kwargs: passed on (`input_context`, `seed` from the training loop).

    Raises:
        FileNotFoundError: nothing matches `file_pattern`; the message names `command`.
    """
    if not tf.io.gfile.glob(file_pattern):
        raise FileNotFoundError(
            f"no pseudo-label records match {file_pattern!r}. Make them with:\n  {command}"
        )
    return dataset_fn(file_pattern, with_nbest=True, **kwargs)


def first_best(batch):
    """`(hyp [B, U'] int32, hyp_lengths [B] int32)`: hypothesis 0 of the batch's N-best."""
    return (
        tf.cast(batch["nbest_token_ids"][:, 0], tf.int32),
        tf.cast(batch["nbest_lengths"][:, 0], tf.int32),
    )


def cut_nbest(batch, nbest_size):
    """Keeps the first `nbest_size` hypotheses of the batch's N-best (a static slice)."""
    batch = dict(batch)
    for key in NBEST_FIELDS[:3]:
        batch[key] = batch[key][:, :nbest_size]
    batch["nbest_count"] = tf.minimum(tf.cast(batch["nbest_count"], tf.int32), nbest_size)
    return batch
