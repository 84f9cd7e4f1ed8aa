"""Writes one TFRecord shard of utterances resumably; the per-shard half of `librispeech`.

A shard `<split>-00003-of-00008.tfrecord` is written under a temp name and renamed into place;
then `<split>-00003-of-00008.stats.json` is written the same way. The stats file is the mark that
the shard is finished: it carries a fingerprint of the shard's inputs and options plus the
shard's size and record count, so a later run can skip the shard only if it is intact.

Sources and problems cross process boundaries, so they are plain dicts here:
a source is `{utterance_id, speaker_id, audio_path, text}` and a problem `{kind, path, message}`.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import threading
from collections.abc import Callable

import tensorflow as tf

from tfkd.data import audio_io, records
from tfkd.data.tokenizer import UNK_ID, Tokenizer


def shard_name(split: str, index: int, num_shards: int) -> str:
    """`<split>-00003-of-00008.tfrecord`."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def shard_pattern(output_dir: str, split: str) -> str:
    """Glob pattern that matches the split's shards (for `tf.data`)."""
    return os.path.join(output_dir, f"{split}-?????-of-?????.tfrecord")


def stats_path(shard_path: str) -> str:
    """The finish mark of a shard: `<split>-00003-of-00008.stats.json`."""
    return shard_path[: -len(".tfrecord")] + ".stats.json"


# The shortest audio worth a record: one 25 ms analysis window, `tfkd.features.LogMel`'s default.
# Shorter audio gives zero feature frames, so zero encoder frames, and the RNN-T loss would stop
# training later with "logit_lengths must be >= 1" without naming the utterance.
MIN_SECONDS = 0.025


def min_samples(sample_rate: int) -> int:
    """Samples in `MIN_SECONDS` at `sample_rate` (400 at 16 kHz)."""
    return math.ceil(sample_rate * MIN_SECONDS - 1e-9)


def fingerprint(sources: list[dict], options: dict) -> str:
    """Hash of what a shard is made from: its inputs (with sizes and times) and the options."""
    h = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for s in sources:
        # The file name, not the path: a moved corpus keeps its finished shards.
        st = os.stat(s["audio_path"])
        name = os.path.basename(s["audio_path"])
        line = f"{s['utterance_id']}\t{name}\t{s['text']}\t{st.st_size}\t{st.st_mtime_ns}\n"
        h.update(line.encode())
    return h.hexdigest()


_progress: Callable[[int], None] = lambda n: None


def set_progress(callback: Callable[[int], None]) -> Callable[[int], None]:
    """Sets the callback told how many utterances were handled; returns the previous one."""
    global _progress
    previous, _progress = _progress, callback
    return previous


# The temp shard this process is writing, removed when a worker dies with its parent.
_current_tmp: str | None = None


def _die_with_parent() -> None:
    if _current_tmp:
        try:
            os.remove(_current_tmp)
        except OSError:
            pass
    os._exit(1)


def exit_with_parent(sentinel=None, on_exit: Callable[[], None] = _die_with_parent):
    """Starts a daemon thread that calls `on_exit` (default: remove the temp shard, `_exit`) as
    soon as the parent process dies.

    Pool workers are not killed with a parent that gets SIGKILL; left alone they finished their
    shards for seconds after `kill -9`. `sentinel` defaults to the spawned worker's
    `multiprocessing.parent_process().sentinel`, a pipe end that becomes readable (EOF) when
    the parent's end closes, which the kernel does when the parent dies.

    Returns:
        The watching thread.
    """
    if sentinel is None:
        sentinel = multiprocessing.parent_process().sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        on_exit()

    thread = threading.Thread(target=watch, name="exit_with_parent", daemon=True)
    thread.start()
    return thread


def init_worker(counter) -> None:
    """Pool initializer: report progress through a shared `multiprocessing.Value`, and die with
    the parent."""

    def bump(n: int) -> None:
        with counter.get_lock():
            counter.value += n

    set_progress(bump)
    exit_with_parent()


def _count_records(path: str) -> int:
    """Reads every record, so a truncated or corrupted shard fails its CRC check here."""
    ds = tf.data.TFRecordDataset(path)
    return int(ds.reduce(0, lambda n, _: n + 1))


def finished_stats(shard_path: str, expected: str, verify: bool) -> tuple[dict | None, str]:
    """Returns (stats, "") for a finished, intact shard, or (None, why it must be rewritten)."""
    marker = stats_path(shard_path)
    if not os.path.exists(marker):
        return None, ""
    try:
        with open(marker, encoding="utf-8") as f:
            stats = json.load(f)
    except (OSError, ValueError) as e:
        return None, f"unreadable stats file {marker} ({e})"
    if stats.get("fingerprint") != expected:
        return None, "its inputs or options changed"
    if not os.path.exists(shard_path):
        return None, "the shard file is missing"
    size = os.path.getsize(shard_path)
    if size != stats["num_bytes"]:
        return None, f"it has {size} bytes, {stats['num_bytes']} expected (truncated?)"
    if verify:
        try:
            n = _count_records(shard_path)
        except Exception as e:  # DataLossError and friends: any failure means rewrite
            return None, f"it fails to read back ({type(e).__name__})"
        if n != stats["num_records"]:
            return None, f"it holds {n} records, {stats['num_records']} expected"
    return stats, ""


def _problem(kind: str, path: str, message: str) -> dict:
    return {"kind": kind, "path": path, "message": message}


def load_audio(
    path: str,
    sample_rate: int,
    resample: bool,
    timeout_s: float = audio_io.DEFAULT_TIMEOUT_S,
):
    """Reads one file for a record; never hangs longer than `timeout_s` on a corrupt file.

    Returns:
        (pcm int16 [N] at `sample_rate`, None), or (None, problem dict) for a file to skip.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        info = audio_io.probe(data, path)
        if info.sample_rate != sample_rate and not resample:
            return None, _problem(
                "wrong_sample_rate",
                path,
                f"{path}: {info.sample_rate} Hz, expected {sample_rate} Hz; skipped "
                "(resample=True / --resample would resample it)",
            )
        pcm, rate = audio_io.decode(data, path, timeout_s)
        if rate != sample_rate:
            pcm = audio_io.resample(pcm, rate, sample_rate)
        shortest = min_samples(sample_rate)
        if pcm.shape[0] < shortest:
            return None, _problem(
                "too_short",
                path,
                f"{path}: {pcm.shape[0]} samples ({1000 * pcm.shape[0] / sample_rate:.2f} ms), "
                f"shorter than one {1000 * MIN_SECONDS:g} ms feature window ({shortest} samples "
                f"at {sample_rate} Hz), so no encoder frame; skipped",
            )
        return pcm, None
    except audio_io.UnsupportedAudioError as e:
        return None, _problem("unsupported_audio", path, f"{e}; skipped")
    except audio_io.AudioDecodeError as e:
        return None, _problem("corrupt_audio", path, f"{e}; skipped")
    except Exception as e:  # noqa: BLE001 -- one unreadable file must not stop the run
        return None, _problem("corrupt_audio", path, f"{path}: {type(e).__name__}: {e}; skipped")


def _word_has_unk(tokenizer, word: str, cache: dict[str, bool]) -> bool:
    if word not in cache:
        cache[word] = UNK_ID in tokenizer.encode(word)
    return cache[word]


def write_shard(task: dict) -> dict:
    """Writes one shard, or verifies and skips it when finished earlier (runs in a worker).

    Args:
        task: `name`, `output_dir`, `sources` (dicts), `fingerprint`, `spm_model` (or None),
            `sample_rate`, `resample`, `verify`, and optionally `decode_timeout_s`.

    Returns:
        The shard's stats (see the stats file) plus `skipped` and `rewrite_reason`.
    """
    path = os.path.join(task["output_dir"], task["name"])
    sources = task["sources"]
    stats, why = finished_stats(path, task["fingerprint"], task["verify"])
    if stats is not None:
        _progress(len(sources))
        return {**stats, "skipped": True, "rewrite_reason": ""}

    if os.path.exists(stats_path(path)):
        # An old mark must not vouch for the shard while it is being replaced.
        os.remove(stats_path(path))
    tokenizer = None
    if task["spm_model"]:
        tokenizer = Tokenizer(task["spm_model"])
    words: collections.Counter = collections.Counter()
    pieces: collections.Counter = collections.Counter()
    unk_cache: dict[str, bool] = {}
    problems, speakers, durations = [], set(), []
    num_tokens = num_unk = oov_words = 0
    global _current_tmp
    tmp = _current_tmp = f"{path}.tmp-{os.getpid()}"
    timeout_s = task.get("decode_timeout_s", audio_io.DEFAULT_TIMEOUT_S)
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for src in sources:
                pcm, problem = load_audio(
                    src["audio_path"], task["sample_rate"], task["resample"], timeout_s
                )
                _progress(1)
                if problem is not None:
                    problems.append(problem)
                    continue
                text = src["text"]
                ids = tokenizer.encode(text) if tokenizer else []
                utt = records.Utterance(
                    utterance_id=src["utterance_id"],
                    speaker_id=src["speaker_id"],
                    text=text,
                    pcm16=pcm,
                    sample_rate=task["sample_rate"],
                    token_ids=ids,
                )
                writer.write(records.serialize_utterance(utt))
                speakers.add(src["speaker_id"])
                durations.append(pcm.shape[0] / task["sample_rate"])
                words.update(text.split())
                if tokenizer:
                    pieces.update(ids)
                    num_tokens += len(ids)
                    num_unk += ids.count(UNK_ID)
                    oov_words += sum(_word_has_unk(tokenizer, w, unk_cache) for w in text.split())
    except BaseException:
        # A bug or Ctrl-C: leave no half-written shard behind.
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        _current_tmp = None
    stats = {
        "fingerprint": task["fingerprint"],
        "num_records": len(durations),
        "num_bytes": os.path.getsize(tmp),
        "seconds": sum(durations),
        "min_seconds": min(durations, default=0.0),
        "max_seconds": max(durations, default=0.0),
        "speakers": sorted(speakers),
        "word_counts": dict(words),
        "piece_counts": {str(k): v for k, v in sorted(pieces.items())},
        "num_tokens": num_tokens,
        "num_unk_tokens": num_unk,
        "oov_words": oov_words,
        "problems": problems,
    }
    # The shard is renamed into place first and its stats file last: a stats file that
    # exists therefore always describes a complete shard.
    os.replace(tmp, path)
    write_json_atomic(stats_path(path), stats)
    return {**stats, "skipped": False, "rewrite_reason": why}


def write_json_atomic(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def remove_stale(output_dir: str, split: str, num_shards: int, say: Callable[[str], None]) -> None:
    """Removes temp files of interrupted runs and shards of a run with another shard count."""
    for tmp in glob.glob(os.path.join(output_dir, f"{split}-?????-of-?????.*.tmp-*")):
        os.remove(tmp)
    keep = re.compile(rf"^{re.escape(split)}-\d{{5}}-of-{num_shards:05d}\.(tfrecord|stats\.json)$")
    for path in glob.glob(os.path.join(output_dir, f"{split}-?????-of-?????.*")):
        if not keep.match(os.path.basename(path)):
            say(f"removing {path}: left over from a run with another number of shards")
            os.remove(path)
