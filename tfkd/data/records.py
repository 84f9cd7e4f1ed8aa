"""The one place that defines tfkd's `tf.train.Example` schema.

Every TFRecord tfkd writes or reads holds one utterance per `tf.train.Example`:

- `audio/pcm16` bytes [1]: little-endian 16-bit PCM, mono.
- `audio/sample_rate` int64 [1]: Hz (tfkd works at 16000).
- `audio/num_samples` int64 [1]: samples in `audio/pcm16`.
- `duration` float [1]: seconds.
- `text` bytes [1]: normalised transcript (lower case).
- `token_ids` int64 [U]: SentencePiece ids, blank excluded (may be empty).
- `utterance_id` bytes [1] (e.g. `103-1240-0000`); `speaker_id` bytes [1] (e.g. `103`).
- `nbest/token_ids` int64 [sum of U_n]: pseudo-labels, the N hypotheses' ids concatenated.
- `nbest/lengths` int64 [N]: tokens in each hypothesis.
- `nbest/teacher_scores` float [N]: the teacher's full-sum log P(y_n | x).
- `soft/log_probs` float [T·(U_1+1)·3]: offline soft-distillation targets, the teacher's collapsed
  log-posteriors log P_T({next label, blank, rest} | t, u) on the lattice of hypothesis 0 (the
  stored 1-best, U_1 = `nbest/lengths[0]` labels), row-major `[T, U_1+1, 3]`, classes in the order
  of `tfkd.losses.COLLAPSED_CLASSES`. At u = U_1 there is no next label: the label class holds
  -1e30 (log 0) and rest covers every non-blank class, as in `soft_distillation_loss`.
- `soft/num_frames` int64 [1]: T, the teacher's encoder frames of this utterance.

The `nbest/*` fields are optional: only records written by `bin/pseudo_label` have them. The
`soft/*` fields are rarer still: only `bin/pseudo_label --soft_targets` writes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

SAMPLE_RATE = 16000

_SCALAR_FEATURES = {
    "audio/pcm16": tf.io.FixedLenFeature([], tf.string),
    "audio/sample_rate": tf.io.FixedLenFeature([], tf.int64),
    "audio/num_samples": tf.io.FixedLenFeature([], tf.int64),
    "duration": tf.io.FixedLenFeature([], tf.float32),
    "text": tf.io.FixedLenFeature([], tf.string),
    "token_ids": tf.io.VarLenFeature(tf.int64),
    "utterance_id": tf.io.FixedLenFeature([], tf.string),
    "speaker_id": tf.io.FixedLenFeature([], tf.string),
}
_NBEST_FEATURES = {
    "nbest/token_ids": tf.io.VarLenFeature(tf.int64),
    "nbest/lengths": tf.io.VarLenFeature(tf.int64),
    "nbest/teacher_scores": tf.io.VarLenFeature(tf.float32),
}
SOFT_LOG_PROBS = "soft/log_probs"
SOFT_NUM_FRAMES = "soft/num_frames"
_SOFT_FEATURES = {
    SOFT_LOG_PROBS: tf.io.VarLenFeature(tf.float32),
    SOFT_NUM_FRAMES: tf.io.FixedLenFeature([], tf.int64),
}


@dataclasses.dataclass
class Utterance:
    """One utterance as held in host memory before it is serialised."""

    utterance_id: str
    speaker_id: str
    text: str
    pcm16: np.ndarray  # int16 [N]
    sample_rate: int = SAMPLE_RATE
    token_ids: Sequence[int] = ()
    nbest_token_ids: Sequence[Sequence[int]] | None = None
    nbest_teacher_scores: Sequence[float] | None = None
    soft_log_probs: np.ndarray | None = None  # float32 [T, U_1+1, 3] on hypothesis 0's lattice


def _bytes(v: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _ints(v: Sequence[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x) for x in v]))


def _floats(v: Sequence[float]) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(x) for x in v]))


def serialize_utterance(utt: Utterance) -> bytes:
    """Serialises one `Utterance` into a `tf.train.Example` byte string.

    Raises:
        ValueError: for audio that is not 1-D int16, or mismatched N-best fields.
    """
    pcm = np.asarray(utt.pcm16)
    if pcm.dtype != np.int16 or pcm.ndim != 1:
        raise ValueError(
            f"{utt.utterance_id}: pcm16 must be 1-D int16, got {pcm.dtype} {pcm.shape}"
        )
    feature = {
        "audio/pcm16": _bytes(pcm.astype("<i2").tobytes()),
        "audio/sample_rate": _ints([utt.sample_rate]),
        "audio/num_samples": _ints([pcm.shape[0]]),
        "duration": _floats([pcm.shape[0] / float(utt.sample_rate)]),
        "text": _bytes(utt.text.encode("utf-8")),
        "token_ids": _ints(utt.token_ids),
        "utterance_id": _bytes(utt.utterance_id.encode("utf-8")),
        "speaker_id": _bytes(utt.speaker_id.encode("utf-8")),
    }
    if utt.nbest_token_ids is not None:
        hyps = [list(h) for h in utt.nbest_token_ids]
        scores = list(utt.nbest_teacher_scores or [])
        if len(scores) != len(hyps) or not hyps:
            raise ValueError(
                f"{utt.utterance_id}: {len(hyps)} N-best hypotheses but {len(scores)} scores"
            )
        feature["nbest/token_ids"] = _ints([t for h in hyps for t in h])
        feature["nbest/lengths"] = _ints([len(h) for h in hyps])
        feature["nbest/teacher_scores"] = _floats(scores)
    if utt.soft_log_probs is not None:
        feature.update(soft_target_features(utt.soft_log_probs, utt.nbest_token_ids, utt))
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def soft_target_features(log_probs, nbest_token_ids, utt=None) -> dict[str, tf.train.Feature]:
    """The `soft/*` features of collapsed teacher log-probs `[T, U_1+1, 3]` (hypothesis 0's).

    Raises:
        ValueError: not `[T, U_1+1, 3]` for the first hypothesis's U_1 labels.
    """
    lps = np.asarray(log_probs, np.float32)
    first = list(nbest_token_ids[0]) if nbest_token_ids else None
    if first is None or lps.ndim != 3 or lps.shape[1:] != (len(first) + 1, 3):
        name = f"{utt.utterance_id}: " if utt is not None else ""
        raise ValueError(
            f"{name}soft targets must be [T, U_1+1, 3] on the lattice of hypothesis 0 "
            f"(U_1 = {None if first is None else len(first)}), got {lps.shape}"
        )
    return {
        SOFT_LOG_PROBS: tf.train.Feature(float_list=tf.train.FloatList(value=lps.ravel())),
        SOFT_NUM_FRAMES: _ints([lps.shape[0]]),
    }


def has_soft_targets(path: str) -> bool:
    """Host: whether the first record of a TFRecord file has the `soft/*` fields."""
    for raw in tf.data.TFRecordDataset(path).take(1):
        example = tf.train.Example.FromString(raw.numpy())
        return SOFT_LOG_PROBS in example.features.feature
    return False


def parse_example(
    serialized: tf.Tensor, with_nbest: bool = False, with_soft_targets: bool = False
) -> dict[str, tf.Tensor]:
    """Parses one serialised example (graph-safe, for `tf.data.Dataset.map`).

    Returns:
        A dict with `waveform` float32 [N] in [-1, 1), `num_samples` int32 [],
        `sample_rate` int32 [], `duration` float32 [], `text` string [],
        `token_ids` int32 [U], `utterance_id` and `speaker_id` string [].
        With `with_nbest`: `nbest_token_ids` int32 [N, U_max] (padded with 0),
        `nbest_lengths` int32 [N] and `teacher_scores` float32 [N].
        With `with_soft_targets` (needs `with_nbest`): `soft_targets` float32 [T, U_1+1, 3]
        and `soft_target_frames` int32 [] (T); a record without them is an error.
    """
    if with_soft_targets and not with_nbest:
        raise ValueError("with_soft_targets needs with_nbest (soft targets follow hypothesis 0)")
    spec = dict(_SCALAR_FEATURES)
    if with_nbest:
        spec.update(_NBEST_FEATURES)
    if with_soft_targets:
        spec.update(_SOFT_FEATURES)
    f = tf.io.parse_single_example(serialized, spec)
    pcm = tf.io.decode_raw(f["audio/pcm16"], tf.int16, little_endian=True)
    out = {
        "waveform": tf.cast(pcm, tf.float32) / 32768.0,
        "num_samples": tf.cast(f["audio/num_samples"], tf.int32),
        "sample_rate": tf.cast(f["audio/sample_rate"], tf.int32),
        "duration": f["duration"],
        "text": f["text"],
        "token_ids": tf.cast(tf.sparse.to_dense(f["token_ids"]), tf.int32),
        "utterance_id": f["utterance_id"],
        "speaker_id": f["speaker_id"],
    }
    if with_nbest:
        flat = tf.cast(tf.sparse.to_dense(f["nbest/token_ids"]), tf.int32)
        lengths = tf.cast(tf.sparse.to_dense(f["nbest/lengths"]), tf.int32)
        out["nbest_token_ids"] = tf.RaggedTensor.from_row_lengths(flat, lengths).to_tensor(0)
        out["nbest_lengths"] = lengths
        out["teacher_scores"] = tf.sparse.to_dense(f["nbest/teacher_scores"])
    if with_soft_targets:
        flat = tf.sparse.to_dense(f[SOFT_LOG_PROBS])
        frames = tf.cast(f[SOFT_NUM_FRAMES], tf.int32)
        nodes = out["nbest_lengths"][0] + 1
        check = tf.debugging.assert_equal(
            tf.size(flat),
            frames * nodes * 3,
            message="soft/log_probs is not [soft/num_frames, nbest/lengths[0] + 1, 3]",
        )
        with tf.control_dependencies([check]):
            out["soft_targets"] = tf.reshape(flat, [frames, nodes, 3])
        out["soft_target_frames"] = frames
    return out
