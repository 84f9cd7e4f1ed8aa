"""Decode a dataset and score it: WER with S/D/I counts, per split, as JSON and a table.

`evaluate_split` takes a built model and a dataset of pipeline batches
(`waveform`, `num_samples`, `token_ids`, `label_length`, optional `text` and
`utterance_id`; see `tfkd.data.pipeline`). References are the `text` field when
present, else the tokenizer's decoding of `token_ids`; hypotheses are the
tokenizer's decoding of the 1-best, so both pass through the same text form.
"""

import json
import os
import time

import numpy as np
import tensorflow as tf
import tqdm

from tfkd import decoding, metrics
from tfkd import features as features_lib

DECODERS = ("greedy", "beam")


def make_decode_fn(model, frontend, decoder="greedy", beam_width=4, max_symbols_per_frame=3):
    """A `tf.function` waveform batch -> 1-best label ids, traced once for all shapes.

    Args:
      model: transducer (see `tfkd.decoding`).
      frontend: `frontend(waveform [B, N], num_samples [B]) -> (features, lengths)`.
      decoder: "greedy" or "beam".
      beam_width: beam width K for "beam".
      max_symbols_per_frame: label limit per encoder frame.

    Returns:
      fn(waveform float32 [B, N], num_samples int32 [B]) -> (token_ids [B, U], lengths [B]).
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")

    @tf.function(
        autograph=False,
        input_signature=[
            tf.TensorSpec([None, None], tf.float32),
            tf.TensorSpec([None], tf.int32),
        ],
    )
    def decode(waveform, num_samples):
        feats, lengths = frontend(waveform, num_samples)
        if decoder == "greedy":
            tokens, token_lengths, _ = decoding.greedy_decode(
                model, feats, lengths, max_symbols_per_frame=max_symbols_per_frame
            )
            return tokens, token_lengths
        nbest = decoding.beam_search(
            model,
            feats,
            lengths,
            beam_width=beam_width,
            nbest=1,
            max_symbols_per_frame=max_symbols_per_frame,
        )
        return nbest.token_ids[:, 0], nbest.lengths[:, 0]

    return decode


def evaluate_split(
    model,
    dataset,
    tokenizer,
    decoder="greedy",
    beam_width=4,
    max_symbols_per_frame=3,
    frontend=None,
    keep_hypotheses=False,
    max_batches=None,
    progress=False,
):
    """Decodes every batch of `dataset` and returns the corpus WER with its counts.

    Args:
      model: a built transducer.
      dataset: iterable of pipeline batches (dicts of tensors or arrays).
      tokenizer: `tfkd.data.tokenizer.Tokenizer` (ids -> text).
      decoder: "greedy", "beam", or a callable `(waveform, num_samples) -> (ids [B, U],
        lengths [B])` (e.g. from `make_decode_fn`, to reuse one traced function).
      beam_width, max_symbols_per_frame: decoder settings (ignored for a callable).
      frontend: waveform -> features layer; default `tfkd.features.LogMel()`. Must match
        the one the model was trained with.
      keep_hypotheses: also return per-utterance references, hypotheses and counts.
      max_batches: stop after this many batches (None: all).
      progress: show a progress bar.

    Returns:
      dict with `wer` (percent), `substitutions`, `deletions`, `insertions`, `errors`,
      `reference_words`, `hypothesis_words`, `utterances`, `decoder`, `beam_width`,
      `max_symbols_per_frame`, `seconds`, `audio_seconds`, `distinct_hypotheses` (how many
      different outputs: 1 when a model emits the same words for every utterance), and with
      `keep_hypotheses` an `utterances_detail` list.
    """
    if callable(decoder):
        decode, decoder_name = decoder, getattr(decoder, "__name__", "custom")
    else:
        frontend = frontend if frontend is not None else features_lib.LogMel()
        decode = make_decode_fn(model, frontend, decoder, beam_width, max_symbols_per_frame)
        decoder_name = decoder
    accumulator = metrics.WerAccumulator()
    details = []
    audio_samples = 0
    distinct = set()
    start = time.time()
    batches = dataset if max_batches is None else _take(dataset, max_batches)
    for batch in tqdm.tqdm(batches, disable=not progress, unit="batch"):
        num_samples = np.asarray(batch["num_samples"], np.int32)
        ids, lengths = decode(tf.convert_to_tensor(batch["waveform"], tf.float32), num_samples)
        hyps = [
            tokenizer.decode(row[:n])
            for row, n in zip(np.asarray(ids), np.asarray(lengths), strict=True)
        ]
        refs = _references(batch, tokenizer)
        per_utterance = accumulator.update(refs, hyps)
        distinct.update(hyps)
        audio_samples += int(num_samples.sum())
        if keep_hypotheses:
            utt_ids = _strings(batch.get("utterance_id"), len(refs))
            for utt, ref, hyp, err in zip(utt_ids, refs, hyps, per_utterance, strict=True):
                details.append(
                    {"utterance_id": utt, "reference": ref, "hypothesis": hyp, **err.as_dict()}
                )
    result = {
        **accumulator.result().as_dict(),
        "decoder": decoder_name,
        "beam_width": beam_width if decoder_name == "beam" else 1,
        "max_symbols_per_frame": max_symbols_per_frame,
        "seconds": time.time() - start,
        "audio_seconds": audio_samples / float(getattr(frontend, "sample_rate", 16000)),
        "distinct_hypotheses": len(distinct),
    }
    if keep_hypotheses:
        result["utterances_detail"] = details
    return result


def _take(dataset, n):
    for i, batch in enumerate(dataset):
        if i >= n:
            return
        yield batch


def _strings(values, count):
    if values is None:
        return [None] * count
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(values)]


def _references(batch, tokenizer):
    """Reference texts of a batch: `text` if present, else decoded `token_ids`."""
    if "text" in batch:
        return _strings(batch["text"], len(np.asarray(batch["text"])))
    ids, lengths = np.asarray(batch["token_ids"]), np.asarray(batch["label_length"])
    return [tokenizer.decode(row[:n]) for row, n in zip(ids, lengths, strict=True)]


def write_report(result, model_dir, split):
    """Writes `result` to `model_dir/eval/<split>.json`; returns the path."""
    path = os.path.join(model_dir, "eval", f"{split}.json")
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps({"split": split, **result}, indent=2, sort_keys=True) + "\n")
    return path


def format_table(results):
    """A short text table of {split: result}: WER, counts and decoding time."""
    header = (
        f"{'split':<12} {'WER %':>7} {'sub':>6} {'del':>6} {'ins':>6} {'words':>7} {'utts':>6} "
        f"{'secs':>7}"
    )
    lines = [header, "-" * len(header)]
    for split, r in results.items():
        lines.append(
            f"{split:<12} {r['wer']:>7.2f} {r['substitutions']:>6d} {r['deletions']:>6d} "
            f"{r['insertions']:>6d} {r['reference_words']:>7d} {r['utterances']:>6d} "
            f"{r.get('seconds', float('nan')):>7.1f}"
        )
    return "\n".join(lines)
