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

The `nbest/*` fields are optional: only records written by `bin/pseudo_label` have them.
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
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def parse_example(serialized: tf.Tensor, with_nbest: bool = False) -> dict[str, tf.Tensor]:
    """Parses one serialised example (graph-safe, for `tf.data.Dataset.map`).

    Returns:
        A dict with `waveform` float32 [N] in [-1, 1), `num_samples` int32 [],
        `sample_rate` int32 [], `duration` float32 [], `text` string [],
        `token_ids` int32 [U], `utterance_id` and `speaker_id` string [].
        With `with_nbest`: `nbest_token_ids` int32 [N, U_max] (padded with 0),
        `nbest_lengths` int32 [N] and `teacher_scores` float32 [N].
    """
    spec = dict(_SCALAR_FEATURES)
    if with_nbest:
        spec.update(_NBEST_FEATURES)
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
    return out
