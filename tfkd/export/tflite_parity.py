"""On-device evaluation: .tflite students vs the Keras student on a test split (host side).

For every model: WER, WER minus the Keras student's WER (same utterances, same greedy decoding),
the fraction of utterances whose token ids equal the Keras ones, the real-time factor of the
interpreter on one thread (interpreter time / audio time; host-side buffering excluded), and the
file size. Whole-utterance models are run utterance by utterance; streaming models (those with a
`.json` next to them) through `StreamingSession`.
"""

from __future__ import annotations

import os
import time

import numpy as np
import tensorflow as tf

from tfkd import decoding, metrics
from tfkd.export import tflite


def keras_greedy(model, frontend, utterances, max_symbols_per_frame=3):
    """Token ids per utterance from the Keras student's greedy decoding (batch of one)."""

    @tf.function(
        autograph=False,
        input_signature=[tf.TensorSpec([1, None], tf.float32), tf.TensorSpec([1], tf.int32)],
    )
    def decode(wave, length):
        feats, lengths = frontend(wave, length)
        ids, n, _ = decoding.greedy_decode(model, feats, lengths, max_symbols_per_frame)
        return ids, n

    out = []
    for wave, _, _ in utterances:
        ids, n = decode(wave[None], np.array([len(wave)], np.int32))
        out.append(ids.numpy()[0, : int(n[0])].tolist())
    return out


class _TimedRunner:
    """A `TFLiteRunner` that accumulates the time spent in the interpreter."""

    def __init__(self, runner):
        self.runner, self.seconds = runner, 0.0

    def __call__(self, **inputs):
        start = time.perf_counter()
        out = self.runner(**inputs)
        self.seconds += time.perf_counter() - start
        return out


def evaluate_model(path, utterances, tokenizer, keras_ids, push_ms=None):
    """Runs one .tflite over `utterances` [(waveform, text, ids)]; returns a result dict."""
    runner = _TimedRunner(tflite.TFLiteRunner(path, num_threads=1))
    meta_path = os.path.splitext(path)[0] + ".json"
    meta = tflite.load_metadata(meta_path) if os.path.exists(meta_path) else None
    hyps_ids = []
    for wave, _, _ in utterances:
        if meta is None:
            ids = tflite.transcribe_whole(runner, wave)
        else:
            push = int(push_ms * meta["sample_rate"] / 1000) if push_ms else None
            ids = tflite.transcribe_streaming(runner, meta, wave, push)
        hyps_ids.append(ids)
    refs = [text for _, text, _ in utterances]
    hyps = [tokenizer.decode(ids) for ids in hyps_ids]
    keras_hyps = [tokenizer.decode(ids) for ids in keras_ids]
    errors = metrics.corpus_errors(refs, hyps)
    keras_errors = metrics.corpus_errors(refs, keras_hyps)
    audio_s = sum(len(w) for w, _, _ in utterances) / 16000.0
    same = sum(a == b for a, b in zip(hyps_ids, keras_ids, strict=True))
    return {
        "model": os.path.basename(path),
        "kind": "whole" if meta is None else "streaming",
        "wer": errors.wer,
        "keras_wer": keras_errors.wer,
        "wer_diff": errors.wer - keras_errors.wer,
        "same_tokens_as_keras": same / max(1, len(utterances)),
        "rtf_1_thread": runner.seconds / max(audio_s, 1e-9),
        "size_bytes": os.path.getsize(path),
        "utterances": len(utterances),
        "audio_seconds": audio_s,
    }


def format_table(rows):
    """Text table of `evaluate_model` results."""
    header = f"{'model':<40} {'WER %':>7} {'Keras':>7} {'diff':>6} {'same':>6} {'RTF':>7} {'MB':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['model']:<40} {r['wer']:>7.2f} {r['keras_wer']:>7.2f} {r['wer_diff']:>+6.2f} "
            f"{r['same_tokens_as_keras']:>6.1%} {r['rtf_1_thread']:>7.4f} "
            f"{r['size_bytes'] / 1e6:>7.3f}"
        )
    return "\n".join(lines)
