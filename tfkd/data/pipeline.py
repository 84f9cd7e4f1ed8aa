"""The input pipeline: TFRecord files → padded dict batches for one replica.

`make_dataset` parses records (schema in `tfkd.data.records`), filters by
duration and label length, shuffles with a seed, batches by length (dynamic
buckets, or fixed bucket shapes with `drop_remainder` for TPU/XLA) and
prefetches. Under `strategy.distribute_datasets_from_function` it reads only its
worker's share and batches `input_context.get_per_replica_batch_size(...)`
utterances; `distribute_dataset` wraps that call. Bad records raise an error that
names the file, or are skipped and counted (see `tfkd.data.reading`).

A batch is a dict:
    waveform       float32 [B, N]   samples in [-1, 1), zero padded
    num_samples    int32   [B]
    token_ids      int32   [B, U]   padded with 0 (the blank id)
    label_length   int32   [B]
  with `with_nbest`:
    nbest_token_ids int32  [B, H, U'] hypotheses, padded with 0
    nbest_lengths   int32  [B, H]     0 for padding hypotheses
    teacher_scores  float32 [B, H]    padding hypotheses get NBEST_PAD_SCORE
    nbest_count     int32  [B]        real hypotheses per utterance
  with soft targets (`soft_targets`; by default when the records have them):
    soft_targets       float32 [B, T', U_1+1, 3] collapsed teacher log-probs on the
                                 lattice of hypothesis 0 (`tfkd.data.records`), zero padded
    soft_target_frames int32   [B]   teacher frames T of each utterance
  with `with_text`: text, utterance_id string [B].

With `static_shapes`, N is the bucket's upper edge in samples, U (and U') is
`max_label_length` and H is `nbest_size`, so a jit-compiled step sees one shape
per bucket; `soft_targets` is `[B, T', max_label_length + 1, 3]` (T', the batch's
longest teacher frame count, stays dynamic: the pipeline does not know the
teacher's frame rate; the trainer fits it to the student's lattice). Like the
label axes, the U axis of `soft_targets` is cut by `trim_labels` (`label_bucket`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfkd import features
from tfkd.data import reading, records, speed_perturb

# Log-score for padding hypotheses: finite (no NaN in gradients), far below any real one.
NBEST_PAD_SCORE = -1e30

# The names of the fields this pipeline yields for distillation (module docstring); the
# distillation batch contract (`tfkd.data.kd_batches`) and the trainers read them from here.
#: The N-best fields of `with_nbest`.
NBEST_FIELDS = ("nbest_token_ids", "nbest_lengths", "teacher_scores", "nbest_count")
#: The stored soft-distillation targets: collapsed teacher log-probs `[B, T', U'+1, 3]` on the
#: 1-best's lattice, and the teacher's frames `[B]`.
SOFT_TARGETS = "soft_targets"
SOFT_TARGET_FRAMES = "soft_target_frames"
#: Padded label fields and the lengths that say how much of each is real (`trim_labels` cuts
#: them).
LABEL_FIELDS = (("token_ids", "label_length"), ("nbest_token_ids", "nbest_lengths"))
#: Fields with a label-node axis (axis 2, U + 1 nodes) and the label field whose U it follows.
LABEL_NODE_FIELDS = ((SOFT_TARGETS, "nbest_token_ids"),)

_log = logging.getLogger(__name__)


def _to_samples(seconds: float) -> int:
    return int(round(seconds * records.SAMPLE_RATE))


def _sentinel(with_nbest: bool, with_soft: bool = False) -> bytes:
    """A record that always parses; `reading.checked_records` appends it to each file."""
    utt = records.Utterance(
        utterance_id="tfkd-end-of-file",
        speaker_id="",
        text="",
        pcm16=np.zeros(1, np.int16),
        nbest_token_ids=[[]] if with_nbest else None,
        nbest_teacher_scores=[0.0] if with_nbest else None,
        soft_log_probs=np.zeros([0, 1, 3], np.float32) if with_soft else None,
    )
    return records.serialize_utterance(utt)


#: The pseudo-label fields `with_nbest` reads (`tfkd.data.records`).
NBEST_RECORD_FIELDS = ("nbest/token_ids", "nbest/lengths", "nbest/teacher_scores")
#: How pseudo-label records are made (named when plain records are read `with_nbest`).
PSEUDO_LABEL_COMMAND = "bin/pseudo_label --teacher_dir=<teacher model_dir> --output_dir=<dir>"


def missing_nbest_fields(path: str) -> list[str]:
    """Host: the `nbest/*` fields that the first record of `path` lacks ([] if none, or if the
    file has no readable record: the pipeline reports that one)."""
    examples = reading.first_examples(path, 1)
    if not examples:
        return []
    present = examples[0].features.feature
    return [f for f in NBEST_RECORD_FIELDS if f not in present]


def plain_records_message(path: str, missing: Sequence[str], command: str) -> str:
    """One line: `path` holds plain records where pseudo-labels were expected, and the fix."""
    return (
        f"{path}: record 0 lacks the N-best fields {', '.join(missing)}: these are plain "
        f"records, not pseudo-labels; make pseudo-labels with {command}"
    )


def _parse_fn(with_nbest: bool, with_text: bool, with_soft: bool = False):
    """serialized [] → the batch fields of one utterance; raises on invalid records."""

    def parse(serialized):
        ex = records.parse_example(serialized, with_nbest=with_nbest, with_soft_targets=with_soft)
        checks = [
            tf.debugging.assert_equal(
                ex["sample_rate"], records.SAMPLE_RATE, message="sample rate is not 16 kHz"
            ),
            tf.debugging.assert_equal(
                ex["num_samples"],
                tf.size(ex["waveform"]),
                message="audio/num_samples disagrees with audio/pcm16",
            ),
        ]
        if with_nbest:
            checks.append(
                tf.debugging.assert_positive(
                    tf.size(ex["nbest_lengths"]), message="record has no N-best hypotheses"
                )
            )
        with tf.control_dependencies(checks):
            out = {
                "waveform": tf.identity(ex["waveform"]),
                "num_samples": ex["num_samples"],
                "token_ids": ex["token_ids"],
                "label_length": tf.size(ex["token_ids"], out_type=tf.int32),
            }
        if with_nbest:
            out["nbest_token_ids"] = ex["nbest_token_ids"]
            out["nbest_lengths"] = ex["nbest_lengths"]
            out["teacher_scores"] = ex["teacher_scores"]
            out["nbest_count"] = tf.size(ex["nbest_lengths"], out_type=tf.int32)
        if with_soft:
            out[SOFT_TARGETS] = ex["soft_targets"]
            out[SOFT_TARGET_FRAMES] = ex["soft_target_frames"]
        if with_text:
            out["text"] = ex["text"]
            out["utterance_id"] = ex["utterance_id"]
        return out

    return parse


def _truncate_nbest(nbest_size: int):
    def truncate(ex):
        ex = dict(ex)
        for key in ("nbest_token_ids", "nbest_lengths", "teacher_scores"):
            ex[key] = ex[key][:nbest_size]
        ex["nbest_count"] = tf.minimum(ex["nbest_count"], nbest_size)
        return ex

    return truncate


def _keep_fn(max_samples: int | None, max_label_length: int | None, with_nbest: bool):
    def keep(ex):
        ok = tf.constant(True)
        if max_samples is not None:
            ok &= ex["num_samples"] <= max_samples
        if max_label_length is not None:
            ok &= ex["label_length"] <= max_label_length
            if with_nbest:
                ok &= tf.reduce_max(ex["nbest_lengths"]) <= max_label_length
        return ok

    return keep


def padding_values(element_spec: dict) -> dict:
    """`padded_batch` padding per field: NBEST_PAD_SCORE for `teacher_scores`, else 0 or ""."""
    values = {}
    for key, spec in element_spec.items():
        if key == "teacher_scores":
            values[key] = tf.constant(NBEST_PAD_SCORE, tf.float32)
        elif spec.dtype == tf.string:
            values[key] = tf.constant("", tf.string)
        else:
            values[key] = tf.zeros([], spec.dtype)
    return values


def _static_shapes(element_spec, num_samples, max_label_length, nbest_size):
    """padded_shapes for one static bucket; `num_samples` is an int64 scalar tensor."""
    shapes = {key: tf.TensorShape([]) for key in element_spec}
    shapes["waveform"] = tf.reshape(num_samples, [1])
    shapes["token_ids"] = tf.TensorShape([max_label_length])
    if "nbest_token_ids" in element_spec:
        shapes["nbest_token_ids"] = tf.TensorShape([nbest_size, max_label_length])
        shapes["nbest_lengths"] = tf.TensorShape([nbest_size])
        shapes["teacher_scores"] = tf.TensorShape([nbest_size])
    if SOFT_TARGETS in element_spec:
        shapes[SOFT_TARGETS] = tf.TensorShape([None, max_label_length + 1, 3])
    return shapes


def make_dataset(
    file_pattern: str | Sequence[str],
    *,
    global_batch_size: int,
    max_duration_s: float | None = None,
    max_label_length: int | None = None,
    shuffle: bool = False,
    seed: int | None = None,
    shuffle_buffer_size: int = 1024,
    bucket_boundaries: Sequence[float] | None = None,
    static_shapes: bool = False,
    nbest_size: int | None = None,
    deterministic: bool = False,
    skip_bad_records: bool = False,
    bad_record_counter: reading.BadRecordCounter | None = None,
    with_nbest: bool = False,
    soft_targets: bool | None = None,
    with_text: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    repeat: bool | int = False,
    cycle_length: int = 4,
    speed_factors: Sequence[float] | None = None,
) -> tf.data.Dataset:
    """Builds the batched dataset of one input pipeline (runs on the host).

    Args:
        file_pattern: glob pattern(s) of uncompressed TFRecord files.
        global_batch_size: utterances per step over all replicas.
        max_duration_s: drop longer utterances (`None`: keep all).
        max_label_length: drop utterances with more tokens (also N-best ones).
        shuffle: shuffle file order and utterances (buffer `shuffle_buffer_size`).
        seed: shuffle seed; with `deterministic` the order is then reproducible.
        bucket_boundaries: bucket edges in seconds, ascending. Dynamic mode pads each
            batch to its longest row; static mode pads to the bucket's upper edge.
        static_shapes: fixed bucket shapes and `drop_remainder` (TPU/XLA). Needs
            `max_duration_s` (the last edge), `max_label_length` and, with
            `with_nbest`, `nbest_size` (extra hypotheses are dropped).
        nbest_size: hypotheses per utterance in static mode.
        deterministic: keep element order reproducible (slower parallel reads).
        skip_bad_records: skip and count bad records instead of raising. Off by
            default; when on, each skip is logged as a warning.
        bad_record_counter: counts skipped records (create it before calling).
        with_nbest: also read the pseudo-label fields.
        soft_targets: with `with_nbest`, also read the offline soft-distillation targets
            (`soft_targets`, `soft_target_frames`); `None`: when the first file's first record
            has them (`bin/pseudo_label --soft_targets`). True: every record must have them.
        with_text: also return `text` and `utterance_id` (not for TPU).
        input_context: from `distribute_datasets_from_function`; shards files per
            input pipeline when there are enough of them, else records.
        repeat: `True` repeats forever, an int that many epochs, `False` once.
        cycle_length: files read in parallel.
        speed_factors: speed perturbation (`tfkd.data.speed_perturb`): each utterance is played
            at a speed drawn uniformly from these factors, e.g. `(0.9, 1.0, 1.1)`, before the
            duration filter and bucketing; reproducible with `seed`. Supervised data only.

    Returns:
        A `tf.data.Dataset` of dict batches (see the module docstring).

    Raises:
        FileNotFoundError: nothing matches `file_pattern`.
        ValueError: inconsistent options; with `with_nbest`, the first file's first record
            has no `nbest/*` fields (plain records, not pseudo-labels).
    """
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    boundaries = sorted(_to_samples(b) for b in bucket_boundaries or ())
    max_samples = None if max_duration_s is None else _to_samples(max_duration_s)
    if static_shapes:
        if max_samples is None or max_label_length is None:
            raise ValueError("static_shapes needs max_duration_s and max_label_length")
        if with_nbest and not nbest_size:
            raise ValueError("static_shapes with with_nbest needs nbest_size")
        if boundaries and boundaries[-1] >= max_samples:
            raise ValueError("bucket_boundaries must lie below max_duration_s")
    if skip_bad_records:
        _log.warning(
            "make_dataset(skip_bad_records=True): bad records in %s are skipped, "
            "logged and counted",
            file_pattern,
        )

    files = reading.list_files(file_pattern)
    if speed_factors is not None:
        speed_factors = speed_perturb.check_factors(speed_factors)
        if with_nbest:
            raise ValueError(
                "speed_factors with with_nbest: the stored teacher scores and soft targets "
                "describe the unperturbed audio; perturb supervised data only"
            )
    if soft_targets and not with_nbest:
        raise ValueError("soft_targets needs with_nbest (the targets follow hypothesis 0)")
    if with_nbest:
        # Checked here, on the host: in the graph a plain record is only "not a valid Example".
        missing = missing_nbest_fields(files[0][0])
        if missing:
            raise ValueError(plain_records_message(files[0][0], missing, PSEUDO_LABEL_COMMAND))
    with_soft = bool(with_nbest and files) and (
        soft_targets if soft_targets is not None else records.has_soft_targets(files[0][0])
    )
    if with_soft and soft_targets is None:
        _log.info("%s: reading the stored soft-distillation targets", file_pattern)
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    shard_files = len(files) >= num_pipelines
    if shard_files:
        # Sharding the sorted list before any shuffle keeps the shards disjoint.
        files = files[pipeline_id::num_pipelines]
    batch_size = (
        input_context.get_per_replica_batch_size(global_batch_size)
        if input_context
        else global_batch_size
    )

    names = tf.data.Dataset.from_tensor_slices(
        ([f for f, _ in files], tf.constant([s for _, s in files], tf.int64))
    )
    if shuffle:
        names = names.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    parse = _parse_fn(with_nbest, with_text, with_soft)
    sentinel = _sentinel(with_nbest, with_soft)
    ds = names.interleave(
        lambda name, size: reading.checked_records(
            name, size, parse, sentinel, skip_bad_records, bad_record_counter
        ),
        cycle_length=max(1, min(cycle_length, len(files))),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if not shard_files:
        ds = ds.shard(num_pipelines, pipeline_id)
    if speed_factors is not None:
        ds = speed_perturb.perturb_dataset(ds, speed_factors, seed)
    if static_shapes and with_nbest:
        ds = ds.map(_truncate_nbest(nbest_size))
    ds = ds.filter(_keep_fn(max_samples, max_label_length, with_nbest))
    if shuffle:
        ds = ds.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat(None if repeat is True else int(repeat))

    pad = padding_values(ds.element_spec)
    if static_shapes:
        edges = tf.constant(boundaries + [max_samples], tf.int64)
        spec = ds.element_spec

        def bucket_of(ex):
            # The first edge >= num_samples.
            return tf.reduce_sum(tf.cast(tf.cast(ex["num_samples"], tf.int64) > edges, tf.int64))

        def batch_bucket(key, window):
            shapes = _static_shapes(spec, edges[key], max_label_length, nbest_size)
            return window.padded_batch(
                batch_size, padded_shapes=shapes, padding_values=pad, drop_remainder=True
            )

        ds = ds.group_by_window(bucket_of, batch_bucket, window_size=batch_size)
    elif boundaries:
        ds = ds.bucket_by_sequence_length(
            element_length_func=lambda ex: ex["num_samples"],
            bucket_boundaries=boundaries,
            bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
            padding_values=pad,
        )
    else:
        ds = ds.padded_batch(batch_size, padding_values=pad)

    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options)


def distribute_dataset(
    strategy: tf.distribute.Strategy, file_pattern: str | Sequence[str], **kwargs
) -> tf.distribute.DistributedDataset:
    """`make_dataset` per input pipeline under `strategy`; kwargs as for `make_dataset`.

    Each input pipeline yields per-replica batches, dealt to its replicas in turn.
    When a finite dataset's batch count is not a multiple of the replicas, the last
    step gives some replicas empty batches; train with `repeat=True`.
    """
    return strategy.distribute_datasets_from_function(
        lambda context: make_dataset(file_pattern, input_context=context, **kwargs)
    )


def compute_feature_stats(
    file_pattern: str | Sequence[str],
    *,
    log_mel: features.LogMel | None = None,
    batch_size: int = 16,
    max_duration_s: float | None = None,
    min_stddev: float = 1e-3,
) -> dict:
    """Global per-bin mean and standard deviation of log-mel over valid frames.

    Args:
        file_pattern: the split to measure (usually the training set).
        log_mel: an un-normalised `tfkd.features.LogMel` (default settings if `None`).
        batch_size: utterances per batch.
        max_duration_s: skip longer utterances.
        min_stddev: floor for the standard deviation (constant bins).

    Returns:
        `mean` and `stddev` float64 [num_mel_bins], `num_frames` int and
        `feature_config` dict; pass them to `tfkd.features.save_feature_stats`.
    """
    log_mel = log_mel or features.LogMel()
    if log_mel.normalization != "none":
        raise ValueError("statistics must be computed on un-normalised features")
    ds = make_dataset(
        file_pattern,
        global_batch_size=batch_size,
        max_duration_s=max_duration_s,
        deterministic=True,
    )

    @tf.function(
        autograph=False,
        input_signature=[tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None], tf.int32)],
    )
    def sums(waveform, num_samples):
        feats, lengths = log_mel(waveform, num_samples)
        feats = tf.cast(feats, tf.float64)  # padding frames are zeros: they add nothing
        return tf.reduce_sum(lengths), tf.reduce_sum(feats, [0, 1]), tf.reduce_sum(feats**2, [0, 1])

    count, total, total_sq = 0, 0.0, 0.0
    for batch in ds:
        n, s, s2 = sums(batch["waveform"], batch["num_samples"])
        count, total, total_sq = count + int(n), total + s.numpy(), total_sq + s2.numpy()
    if count == 0:
        raise ValueError(f"no feature frames in {file_pattern}")
    mean = total / count
    stddev = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return {
        "mean": mean,
        "stddev": np.maximum(stddev, min_stddev),
        "num_frames": count,
        "feature_config": log_mel.feature_config(),
    }
