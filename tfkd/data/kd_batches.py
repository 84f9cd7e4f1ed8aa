"""The batch contract of the distillation trainers: N-best fields and pseudo-label data.

Offline distillation reads `bin/pseudo_label` records through `make_dataset(with_nbest=True)`
(`pseudo_label_dataset`); an online teacher fills the same fields in
(`tfkd.training.distillation`). The field names are the pipeline's (`tfkd.data.pipeline`, the
producer), re-exported here. `mixed_label_dataset` adds ground-truth examples (`labeled = True`,
no hypotheses) for the `rnnt_gt` term. Per-replica helpers here cut those fields without touching
their meaning (`tfkd.training.trainers.trim_labels` trims them).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

import tensorflow as tf

from tfkd.data import pipeline
from tfkd.data.pipeline import NBEST_FIELDS, SOFT_TARGET_FRAMES, SOFT_TARGETS

__all__ = [
    "LABELED",
    "NBEST_FIELDS",
    "PSEUDO_LABEL_COMMAND",
    "SOFT_TARGETS",
    "SOFT_TARGETS_COMMAND",
    "SOFT_TARGET_FRAMES",
    "cut_nbest",
    "first_best",
    "fit_soft_targets",
    "has_hypotheses",
    "mixed_label_dataset",
    "pseudo_label_dataset",
    "soft_targets_reduction_factor",
]

#: How pseudo-label records with soft targets are made (named when a soft student has neither
#: a teacher nor stored targets).
SOFT_TARGETS_COMMAND = (
    "bin/pseudo_label --teacher_dir=runs/teacher --output_dir=data/pseudo-soft --soft_targets"
)
#: Batch field that marks labelled examples for the `rnnt_gt` term.
LABELED = "labeled"
#: How the built-in corpus's pseudo-label records are made (named when they are missing).
PSEUDO_LABEL_COMMAND = (
    "bin/train --gin_file=gin/teacher.gin --model_dir=runs/teacher   # if there is no teacher\n"
    "  bin/pseudo_label --teacher_dir=runs/teacher --output_dir=data/pseudo"
)

_log = logging.getLogger(__name__)


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
        ValueError: the first file's first record has no `nbest/*` fields (plain records);
            the message names the fields and `command`.
    """
    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise FileNotFoundError(
            f"no pseudo-label records match {file_pattern!r}. Make them with:\n  {command}"
        )
    missing = pipeline.missing_nbest_fields(files[0])
    if missing:
        last = command.splitlines()[-1].strip()  # the pseudo-label step of the command
        raise ValueError(pipeline.plain_records_message(files[0], missing, last))
    return dataset_fn(file_pattern, with_nbest=True, **kwargs)


def mixed_label_dataset(
    *,
    file_pattern: str,
    labeled_file_pattern: str,
    labeled_share: float,
    global_batch_size: int,
    dataset_fn: Callable[..., tf.data.Dataset] = pipeline.make_dataset,
    seed: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
    command: str = PSEUDO_LABEL_COMMAND,
    **kwargs,
) -> tf.data.Dataset:
    """Host: batches mixing ground-truth and pseudo-label examples, for `rnnt_gt` (METHODS §6).

    Two `dataset_fn` pipelines (so one set of gin bindings: filters, buckets, shuffle, repeat,
    sharding by `input_context`) are unbatched; each example is then drawn from the labelled one
    with probability `labeled_share`, else from the pseudo-label one
    (`tf.data.Dataset.sample_from_datasets`, seeded by `seed`, stopping when either ends), and
    the examples are batched again. Every batch has the fields of `make_dataset(with_nbest=True)`
    plus `labeled` bool [B]:
    - pseudo-label examples: their stored N-best and `labeled = False` (their stored transcript is
      for analysis and stays out of training);
    - labelled examples: `labeled = True`, their transcript in `token_ids`, and *no* hypotheses:
      `nbest_count = 0`, `nbest_lengths = 0`, `nbest_token_ids = 0` and `teacher_scores =
      NBEST_PAD_SCORE`, exactly what padding hypotheses hold. The full-sum and discriminative
      terms ignore hypotheses beyond `nbest_count`, and the hard and soft terms are 0 on rows with
      `nbest_count = 0`, so every distillation term is 0 there, with zero gradient;
      `rnnt_gt = −log P_S(y*|x)` (`ground_truth="flag"`) is their only term.

    Static shapes: when the pseudo-label batches have a static size and N-best shape
    (`make_dataset(static_shapes=True)`), the empty N-best is `[nbest_size, max_label_length]`
    like theirs, and examples are regrouped by their padded length (their bucket's edge) into
    full batches, so every mixed batch has one of the pipeline's bucket shapes.

    Args:
        file_pattern: pseudo-label records (`bin/pseudo_label`, with `nbest/*` fields).
        labeled_file_pattern: ground-truth records (e.g. `train-labeled-*.tfrecord`).
        labeled_share: expected fraction of labelled examples, in (0, 1).
        global_batch_size: examples per step over all replicas (also passed to `dataset_fn`).
        dataset_fn: the batching pipeline (gin: `@train_data/make_dataset`).
        seed: shuffle and mixing seed (from the training loop).
        input_context: from `distribute_datasets_from_function`: both streams read their share.
        command: how to make the pseudo-label records, named when none exist.
        **kwargs: passed on to `dataset_fn`.

    Raises:
        ValueError: `labeled_share` outside (0, 1).
        FileNotFoundError: either pattern matches nothing; for pseudo-labels the message names
            `command`.
    """
    if not 0.0 < labeled_share < 1.0:
        raise ValueError(
            f"labeled_share must lie in (0, 1), got {labeled_share}; use pseudo_label_dataset "
            "for pseudo-labels only, make_dataset for ground truth only"
        )
    if not tf.io.gfile.glob(labeled_file_pattern):
        raise FileNotFoundError(f"no labelled records match {labeled_file_pattern!r}")
    kwargs.update(global_batch_size=global_batch_size, seed=seed, input_context=input_context)
    pseudo = pseudo_label_dataset(
        file_pattern=file_pattern, dataset_fn=dataset_fn, command=command, **kwargs
    )
    labeled = dataset_fn(labeled_file_pattern, with_nbest=False, **kwargs)
    spec = pseudo.element_spec
    static = spec["waveform"].shape[0] is not None
    nbest_shape = spec["nbest_token_ids"].shape[1:]
    # Dynamic batches: one empty hypothesis slot, so that a batch of labelled rows still has H = 1.
    nbest_shape = nbest_shape.as_list() if static and nbest_shape.is_fully_defined() else [1, 0]

    def no_hypotheses(ex):
        ex = dict(ex)
        ex["nbest_token_ids"] = tf.zeros(nbest_shape, spec["nbest_token_ids"].dtype)
        ex["nbest_lengths"] = tf.zeros(nbest_shape[:1], spec["nbest_lengths"].dtype)
        pad_score = tf.constant(pipeline.NBEST_PAD_SCORE, spec["teacher_scores"].dtype)
        ex["teacher_scores"] = tf.fill(nbest_shape[:1], pad_score)
        ex["nbest_count"] = tf.zeros([], spec["nbest_count"].dtype)
        if SOFT_TARGETS in spec:
            # No frames: every node is padding (0), and the soft term is 0 on these rows.
            nodes = spec[SOFT_TARGETS].shape[2]  # batched spec [B, T, U+1, 3]
            ex[SOFT_TARGETS] = tf.zeros([0, nodes if nodes is not None else 1, 3], tf.float32)
            ex[SOFT_TARGET_FRAMES] = tf.zeros([], spec[SOFT_TARGET_FRAMES].dtype)
        ex[LABELED] = tf.constant(True)
        return ex

    def unlabeled(ex):
        return {**ex, LABELED: tf.constant(False)}

    mixed = tf.data.Dataset.sample_from_datasets(
        [labeled.unbatch().map(no_hypotheses), pseudo.unbatch().map(unlabeled)],
        weights=[labeled_share, 1.0 - labeled_share],
        seed=seed,
        stop_on_empty_dataset=True,
    )
    batch_size = (
        input_context.get_per_replica_batch_size(global_batch_size)
        if input_context
        else global_batch_size
    )
    pad = pipeline.padding_values(mixed.element_spec)
    if static:
        # Unbatched static examples keep their bucket's padded length: regroup by it.
        mixed = mixed.group_by_window(
            lambda ex: tf.cast(tf.shape(ex["waveform"])[0], tf.int64),
            lambda _, window: window.padded_batch(
                batch_size, padding_values=pad, drop_remainder=True
            ),
            window_size=batch_size,
        )
    else:
        mixed = mixed.padded_batch(batch_size, padding_values=pad)
    _log.info(
        "mixing %s (share %.3g, labeled=True) into pseudo-labels %s",
        labeled_file_pattern,
        labeled_share,
        file_pattern,
    )
    return mixed.prefetch(tf.data.AUTOTUNE)


def soft_targets_reduction_factor(file_pattern: str) -> tuple[int | None, str]:
    """Host: `(teacher reduction factor, where it was read)` of pseudo-label records with soft
    targets, from the `manifest.json` that `bin/pseudo_label` wrote next to them.

    `(None, "")` (and a warning) when there is no manifest or it names no factor (records made
    by an older `bin/pseudo_label`): the per-utterance frame counts are then the only check.

    Raises:
        ValueError: the manifest says the records have no soft targets.
    """
    path = os.path.join(os.path.dirname(file_pattern), "manifest.json")
    if not tf.io.gfile.exists(path):
        _log.warning("no %s: the teacher's frame rate is checked at the first batch only", path)
        return None, ""
    with tf.io.gfile.GFile(path) as f:
        manifest = json.load(f)
    if not manifest.get("soft_targets"):
        raise ValueError(
            f"the pseudo-label records {file_pattern!r} have no soft targets ({path}): "
            f"make them with --soft_targets, e.g.\n  {SOFT_TARGETS_COMMAND}\nor give the soft "
            "student an online teacher (teacher_fn and teacher_dir)"
        )
    factor = manifest.get("teacher_reduction_factor")
    if factor is None:
        _log.warning("%s names no teacher_reduction_factor: checked at the first batch", path)
        return None, ""
    return int(factor), f"the teacher of the soft targets ({path})"


def has_hypotheses(batch):
    """`[B]` bool: rows with at least one hypothesis (labelled rows of a mixed batch have none)."""
    return tf.cast(batch["nbest_count"], tf.int32) > 0


def first_best(batch):
    """`(hyp [B, U'] int32, hyp_lengths [B] int32)`: hypothesis 0 of the batch's N-best."""
    return (
        tf.cast(batch["nbest_token_ids"][:, 0], tf.int32),
        tf.cast(batch["nbest_lengths"][:, 0], tf.int32),
    )


def fit_soft_targets(targets, frames, nodes):
    """Per replica: stored soft targets `[B, T', U'+1, 3]` cut or zero-padded to `[B, frames,
    nodes, 3]`, the student's lattice (`frames` its encoder frames, `nodes` = U + 1 of its label
    axis). Padding nodes are masked by the loss; real ones must agree, which the loss checks
    per utterance with the stored frame counts."""
    targets = targets[:, :frames, :nodes]
    shape = tf.shape(targets)
    paddings = [[0, 0], [0, frames - shape[1]], [0, nodes - shape[2]], [0, 0]]
    return tf.pad(targets, paddings)


def cut_nbest(batch, nbest_size):
    """Cuts or pads the batch's N-best to exactly `nbest_size` hypothesis slots.

    Padding slots are what the pipeline pads with (no tokens, `NBEST_PAD_SCORE`), so a batch
    whose lists are all shorter (e.g. only labelled rows of `mixed_label_dataset`) still has the
    N >= 2 slots the discriminative loss needs. Static shapes stay static.
    """
    batch = dict(batch)
    ids, lengths, scores, count = NBEST_FIELDS
    have = batch[lengths].shape[1]
    missing = nbest_size - have if have is not None else None
    fills = {ids: 0, lengths: 0, scores: pipeline.NBEST_PAD_SCORE}
    for key, fill in fills.items():
        value = batch[key][:, :nbest_size]
        if missing is None or missing > 0:
            extra = missing if missing is not None else nbest_size - tf.shape(value)[1]
            paddings = [[0, 0], [0, extra]] + [[0, 0]] * (value.shape.rank - 2)
            value = tf.pad(value, paddings, constant_values=tf.cast(fill, value.dtype))
            value = tf.ensure_shape(value, [None, nbest_size] + [None] * (value.shape.rank - 2))
        batch[key] = value
    batch[count] = tf.minimum(tf.cast(batch[count], tf.int32), nbest_size)
    return batch
