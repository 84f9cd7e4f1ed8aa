"""Pseudo-labelling: a teacher's N-best with full-sum scores, written into TFRecords.

The offline-teacher mode of METHODS.md §2 and §4: a teacher decodes a split by beam search
(width K) and every record is copied with three extra fields (schema in `tfkd.data.records`):
the N-best token ids, their lengths, and each hypothesis's **full-sum** teacher log-probability
`log P_T(y_n|x)` from `tfkd.teacher` (not the beam score, which only sums the alignments the
beam kept). Hard and full-sum students then train with no teacher in memory.

Offline soft-distillation targets (§3, `Settings.soft_targets`, `bin/pseudo_label --soft_targets`):
every record also gets the teacher's collapsed lattice log-posteriors on its stored 1-best,
`soft/log_probs [T, U+1, 3]` = log P_T({next label, blank, rest} | t, u)
(`tfkd.losses.collapsed_lattice`) and `soft/num_frames`, so that a soft student needs no teacher
in memory either; the manifest then names `teacher_reduction_factor` (the student must match it).

Controlled label noise (§7): with `noise_rate > 0` the stored hypotheses are corrupted at that
word-piece error rate (`tfkd.label_noise`) and then rescored by the teacher, so the stored scores
are the teacher's belief in the corrupted labels, and soft targets are computed on the corrupted
1-best.

Work is done per input file: input `dir/x.tfrecord` becomes `output_dir/x.tfrecord`, written under a
temp name and renamed into place, then marked finished by `x.stats.json` (written atomically, with
a fingerprint of the input file and the settings, and the shard's error counts). A rerun skips the
finished shards, and the manifest's teacher WER still covers the whole split because it is summed
from the stats files. Batches are decoded in one `tf.function`; records are parsed in parallel.
Runs on the host, one device.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os

import numpy as np
import tensorflow as tf
import tqdm

from tfkd import features as features_lib
from tfkd import label_noise, metrics
from tfkd import teacher as teacher_lib
from tfkd.data import reading, records, shard_writer

log = logging.getLogger("tfkd.pseudo_label")

MANIFEST = "manifest.json"
# Feature names of the pseudo-label fields, as documented in `tfkd.data.records` (the round-trip
# test parses written records with `records.parse_example(with_nbest=True)`).
NBEST_TOKEN_IDS = "nbest/token_ids"
NBEST_LENGTHS = "nbest/lengths"
NBEST_TEACHER_SCORES = "nbest/teacher_scores"
_COUNTS = (
    "utterances",
    "reference_tokens",
    "teacher_token_errors",
    "label_token_errors",
    "clean_tokens",
    "noise_edits",
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """All a pseudo-label shard depends on besides its input file (both are fingerprinted)."""

    beam_width: int = 8
    nbest: int = 4
    max_symbols_per_frame: int = 3
    noise_rate: float = 0.0
    seed: int = 0
    teacher: str = ""  # identifies the teacher weights (e.g. its checkpoint path)
    soft_targets: bool = False  # also store the collapsed lattice of the 1-best (soft KD)

    def __post_init__(self):
        if not 1 <= self.nbest <= self.beam_width:
            raise ValueError(f"need 1 <= nbest <= beam_width, got {self.nbest}, {self.beam_width}")
        if not 0.0 <= self.noise_rate <= 1.0:
            raise ValueError(f"noise_rate must be in [0, 1], got {self.noise_rate}")


def make_label_fn(model, frontend, settings: Settings):
    """`tf.function` waveform batch -> beam N-best and full-sum teacher scores.

    Returns:
      fn(waveform float32 [B, S], num_samples int32 [B]) -> dict with `token_ids [B, N, U]`,
      `lengths [B, N]`, `beam_scores [B, N]` (-inf for empty slots), `teacher_scores [B, N]`
      (full-sum), and the encoder output `enc [B, T, D]`, `enc_lengths [B]` for rescoring.
    """

    @tf.function(
        autograph=False,
        input_signature=[tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None], tf.int32)],
    )
    def label(waveform, num_samples):
        enc, enc_lengths = teacher_lib.encode(model, frontend, waveform, num_samples)
        nbest = teacher_lib.beam_nbest(
            model,
            enc,
            enc_lengths,
            settings.beam_width,
            settings.nbest,
            settings.max_symbols_per_frame,
        )
        scores = teacher_lib.full_sum_scores(
            model, enc, enc_lengths, nbest.token_ids, nbest.lengths
        )
        return {
            "token_ids": nbest.token_ids,
            "lengths": nbest.lengths,
            "beam_scores": nbest.scores,
            "teacher_scores": scores,
            "enc": enc,
            "enc_lengths": enc_lengths,
        }

    return label


def make_rescore_fn(model):
    """`tf.function` (enc [B, T, D], enc_lengths [B], hyps [B, N, U], lengths [B, N]) -> [B, N]
    full-sum teacher log-probs of given hypotheses, reusing the encoder output."""

    @tf.function(reduce_retracing=True, autograph=False)
    def rescore(enc, enc_lengths, hypotheses, lengths):
        return teacher_lib.full_sum_scores(model, enc, enc_lengths, hypotheses, lengths)

    return rescore


def make_soft_target_fn(model):
    """`tf.function` (enc [B, T, D], enc_lengths [B], hyp [B, U], hyp_lengths [B]) ->
    `[B, T, U+1, 3]` the teacher's collapsed lattice log-probs on `hyp` (`collapsed_lattice`),
    reusing the encoder output; what the online soft trainer computes from the same teacher."""

    @tf.function(reduce_retracing=True, autograph=False)
    def soft_targets(enc, enc_lengths, hyp, hyp_lengths):
        return teacher_lib.soft_targets(model, enc, hyp, hyp_lengths)

    return soft_targets


def add_nbest(serialized: bytes, hypotheses, scores, soft_log_probs=None) -> bytes:
    """The serialised example with its N-best fields set (replaced if present), and with
    `soft_log_probs [T, U_1+1, 3]` its soft-target fields (`tfkd.data.records`)."""
    example = tf.train.Example.FromString(serialized)
    feature = example.features.feature
    feature[NBEST_TOKEN_IDS].int64_list.value[:] = [int(t) for h in hypotheses for t in h]
    feature[NBEST_LENGTHS].int64_list.value[:] = [len(h) for h in hypotheses]
    feature[NBEST_TEACHER_SCORES].float_list.value[:] = [float(s) for s in scores]
    if soft_log_probs is not None:
        for key, value in records.soft_target_features(soft_log_probs, hypotheses).items():
            feature[key].CopyFrom(value)
    return example.SerializeToString()


def _soft_targets(soft_fn, out, stored):
    """Per utterance `[T_b, U_1+1, 3]` soft targets on the stored (maybe corrupted) 1-best."""
    firsts = [hyps[0] for hyps in stored]
    ids, lengths = pad_hypotheses([[h] for h in firsts], 1)
    lattice = soft_fn(out["enc"], out["enc_lengths"], ids[:, 0], lengths[:, 0]).numpy()
    frames = out["enc_lengths"]
    return [lattice[b, : frames[b], : len(h) + 1] for b, h in enumerate(firsts)]


def pad_hypotheses(hypotheses_per_utt, num_slots):
    """[[ids]] per utterance -> (ids [B, N, U] int32 0-padded, lengths [B, N])."""
    max_len = max([len(h) for hyps in hypotheses_per_utt for h in hyps] + [1])
    ids = np.zeros([len(hypotheses_per_utt), num_slots, max_len], np.int32)
    lengths = np.zeros([len(hypotheses_per_utt), num_slots], np.int32)
    for b, hyps in enumerate(hypotheses_per_utt):
        for n, h in enumerate(hyps):
            ids[b, n, : len(h)] = h
            lengths[b, n] = len(h)
    return ids, lengths


def _dataset(path, batch_size):
    def parse(serialized):
        ex = records.parse_example(serialized)
        keep = ("waveform", "num_samples", "token_ids", "text", "utterance_id")
        return {"serialized": serialized, **{k: ex[k] for k in keep}}

    ds = tf.data.TFRecordDataset(path).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.padded_batch(batch_size).prefetch(2)


def _strings(values):
    return [v.decode("utf-8") for v in np.asarray(values)]


def _nbest_lists(out):
    """Host N-best lists per utterance: the non-empty beam slots' ids and full-sum scores."""
    hyps, scores = [], []
    for b in range(out["token_ids"].shape[0]):
        valid = np.flatnonzero(out["beam_scores"][b] > -np.inf)  # empty slots are -inf
        hyps.append([out["token_ids"][b, n, : out["lengths"][b, n]].tolist() for n in valid])
        scores.append(out["teacher_scores"][b, valid])
    return hyps, scores


def label_shard(
    input_path,
    output_path,
    label_fn,
    rescore_fn,
    settings,
    vocab_size,
    batch_size,
    ids_to_text=None,
    on_batch=None,
    soft_fn=None,
):
    """Pseudo-labels one input file into `output_path` (temp file + atomic rename).

    Args:
      input_path: a TFRecord file of tfkd records.
      output_path: where the labelled copy goes.
      label_fn, rescore_fn: from `make_label_fn` / `make_rescore_fn`.
      settings: `Settings` (noise rate and seed are used here).
      vocab_size: V of the teacher, for label noise.
      batch_size: utterances per decoding batch.
      ids_to_text: optional `ids -> text` (e.g. `Tokenizer.decode`) for word error counts.
      on_batch: optional callback with the number of utterances just done.
      soft_fn: from `make_soft_target_fn`; required with `settings.soft_targets`.

    Returns:
      The shard's counts: `utterances`, `reference_tokens`, `teacher_token_errors` (clean 1-best
      vs reference ids), `label_token_errors` (stored 1-best vs reference ids), `clean_tokens`
      (all clean hypotheses), `noise_edits` (edit distance clean -> stored, all hypotheses), and
      with `ids_to_text` `teacher_words` / `label_words` (`metrics.WordErrors.as_dict()`).
    """
    if settings.soft_targets and soft_fn is None:
        raise ValueError("settings.soft_targets needs soft_fn (make_soft_target_fn)")
    counts = dict.fromkeys(_COUNTS, 0)
    teacher_words, label_words = metrics.WerAccumulator(), metrics.WerAccumulator()
    distance = label_noise.edit_distance
    tmp = f"{output_path}.tmp-{os.getpid()}"
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for batch in _dataset(input_path, batch_size):
                out = label_fn(batch["waveform"], batch["num_samples"])
                out = {k: v.numpy() for k, v in out.items()}
                keys = _strings(batch["utterance_id"])
                clean, scores = _nbest_lists(out)
                stored = clean
                if settings.noise_rate > 0:
                    stored = [
                        label_noise.corrupt_nbest(
                            h, settings.noise_rate, vocab_size, settings.seed, key
                        )
                        for h, key in zip(clean, keys, strict=True)
                    ]
                    ids, lengths = pad_hypotheses(stored, out["token_ids"].shape[1])
                    rescored = rescore_fn(out["enc"], out["enc_lengths"], ids, lengths).numpy()
                    scores = [rescored[b, : len(h)] for b, h in enumerate(stored)]
                soft = _soft_targets(soft_fn, out, stored) if settings.soft_targets else None
                for b, row in enumerate(batch["token_ids"].numpy()):
                    ref = row[row != 0].tolist()  # ids are never the padding value 0 (blank)
                    counts["utterances"] += 1
                    counts["reference_tokens"] += len(ref)
                    counts["teacher_token_errors"] += distance(ref, clean[b][0])
                    counts["label_token_errors"] += distance(ref, stored[b][0])
                    counts["clean_tokens"] += sum(len(h) for h in clean[b])
                    counts["noise_edits"] += sum(
                        distance(c, s) for c, s in zip(clean[b], stored[b], strict=True)
                    )
                    writer.write(
                        add_nbest(
                            batch["serialized"][b].numpy(),
                            stored[b],
                            scores[b],
                            soft[b] if soft is not None else None,
                        )
                    )
                if ids_to_text is not None:
                    texts = _strings(batch["text"])
                    teacher_words.update(texts, [ids_to_text(h[0]) for h in clean])
                    label_words.update(texts, [ids_to_text(h[0]) for h in stored])
                if on_batch is not None:
                    on_batch(len(keys))
        os.replace(tmp, output_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if ids_to_text is not None:
        counts["teacher_words"] = teacher_words.result().as_dict()
        counts["label_words"] = label_words.result().as_dict()
    return counts


def shard_fingerprint(input_path: str, settings: Settings) -> str:
    """Hash of an output shard's inputs: the input file (name, size, time) and the settings."""
    st = os.stat(input_path)
    fields = dataclasses.asdict(settings)
    if not fields["soft_targets"]:
        del fields["soft_targets"]  # shards made before the option existed stay finished
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    h.update(f"{os.path.basename(input_path)}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()


def output_path_for(input_path: str, output_dir: str) -> str:
    """`dir/x.tfrecord` -> `output_dir/x.tfrecord` (the suffix is added when missing)."""
    name = os.path.basename(input_path)
    if not name.endswith(".tfrecord"):
        name += ".tfrecord"
    return os.path.join(output_dir, name)


def _count_records(path):
    return int(tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1))


def pseudo_label(
    model,
    input_pattern,
    output_dir,
    settings: Settings = Settings(),
    *,
    frontend=None,
    batch_size=8,
    ids_to_text=None,
    progress=True,
):
    """Pseudo-labels every file of a split; resumable per output shard; writes the manifest.

    Args:
      model: the built, restored teacher transducer.
      input_pattern: glob (or list of globs) of the split's TFRecord files.
      output_dir: where the labelled files, their `.stats.json` marks and `manifest.json` go.
      settings: beam width K, N-best size, noise rate, seed, teacher identity, soft targets.
      frontend: waveform -> features layer the teacher was trained with (default `LogMel()`).
      batch_size: utterances per decoding batch.
      ids_to_text: optional `ids -> text` (e.g. `Tokenizer.decode`); enables the word WER.
      progress: show a tqdm bar over utterances.

    Returns:
      The manifest (also written to `output_dir/manifest.json`): settings, shards, totals,
      `teacher_token_error_rate`, `label_token_error_rate`, `applied_noise_rate` (fractions) and,
      with `ids_to_text`, `teacher_wer` / `label_wer` (percent) with their counts;
      `teacher_reduction_factor` (the teacher's input frames per encoder frame) when every shard's
      stats name it, and `soft_targets` (from the settings).

    Raises:
      ValueError: no input file, or `output_dir` holds the input files themselves.
    """
    frontend = frontend if frontend is not None else features_lib.LogMel()
    inputs = [path for path, _ in reading.list_files(input_pattern)]
    if not inputs:
        raise ValueError(f"no TFRecord file matches {input_pattern!r}")
    os.makedirs(output_dir, exist_ok=True)
    outputs = [output_path_for(p, output_dir) for p in inputs]
    for src, dst in zip(inputs, outputs, strict=True):
        if os.path.realpath(src) == os.path.realpath(dst):
            raise ValueError(f"{output_dir} holds the input {src}: choose another output_dir")
    if len(set(outputs)) != len(outputs):
        raise ValueError("input files share a name: they would map to the same output shard")

    for tmp in glob.glob(os.path.join(output_dir, "*.tfrecord.tmp-*")):
        os.remove(tmp)  # left by a killed run; its shard has no stats mark and is redone
    pending, shards = [], []
    for src, dst in zip(inputs, outputs, strict=True):
        expected = shard_fingerprint(src, settings)
        stats, why = shard_writer.finished_stats(dst, expected, verify=False)
        if stats is not None:
            log.info("skipping %s: finished", dst)
            shards.append({**stats, "skipped": True})
        else:
            if why:
                log.info("rewriting %s: %s", dst, why)
            pending.append((src, dst, expected))
            shards.append(None)
    total = sum(_count_records(src) for src, _, _ in pending)
    bar = tqdm.tqdm(total=total, disable=not progress, unit="utt", desc="pseudo-label")
    label_fn = make_label_fn(model, frontend, settings) if pending else None
    rescore_fn = make_rescore_fn(model) if pending else None
    soft_fn = make_soft_target_fn(model) if pending and settings.soft_targets else None
    for src, dst, expected in pending:
        counts = label_shard(
            src,
            dst,
            label_fn,
            rescore_fn,
            settings,
            model.vocab_size,
            batch_size,
            ids_to_text,
            on_batch=bar.update,
            soft_fn=soft_fn,
        )
        stats = {
            "input": src,
            "output": dst,
            "fingerprint": expected,
            "num_bytes": os.path.getsize(dst),
            "num_records": counts["utterances"],
            "teacher_reduction_factor": int(model.reduction_factor),
            **counts,
        }
        shard_writer.write_json_atomic(shard_writer.stats_path(dst), stats)
        shards[outputs.index(dst)] = {**stats, "skipped": False}
    bar.close()
    manifest = _manifest(input_pattern, output_dir, settings, shards)
    shard_writer.write_json_atomic(os.path.join(output_dir, MANIFEST), manifest)
    return manifest


def _manifest(input_pattern, output_dir, settings, shards):
    totals = {k: sum(s[k] for s in shards) for k in _COUNTS}
    manifest = {
        "input_pattern": input_pattern,
        "output_pattern": os.path.join(output_dir, "*.tfrecord"),
        **dataclasses.asdict(settings),
        "shards": shards,
        **totals,
        "teacher_token_error_rate": _ratio(
            totals["teacher_token_errors"], totals["reference_tokens"]
        ),
        "label_token_error_rate": _ratio(totals["label_token_errors"], totals["reference_tokens"]),
        "applied_noise_rate": _ratio(totals["noise_edits"], totals["clean_tokens"]),
    }
    # Frames per teacher encoder frame: soft targets need a student at the same rate.
    factors = {s.get("teacher_reduction_factor") for s in shards}
    if len(factors) == 1 and None not in factors:
        manifest["teacher_reduction_factor"] = factors.pop()
    for name in ("teacher", "label"):
        per_shard = [s.get(f"{name}_words") for s in shards]
        if all(w is not None for w in per_shard):
            words = sum((_word_errors(w) for w in per_shard), metrics.WordErrors())
            manifest[f"{name}_word_errors"] = words.as_dict()
            manifest[f"{name}_wer"] = words.wer
    return manifest


def _word_errors(counts):
    fields = {f.name for f in dataclasses.fields(metrics.WordErrors)}
    return metrics.WordErrors(**{k: v for k, v in counts.items() if k in fields})


def _ratio(num, den):
    return num / den if den else 0.0
