"""LibriSpeech-layout corpus → sharded TFRecords of `records.Utterance` plus a manifest.

Layout read (LibriSpeech's, also written by `tools/make_corpus.py`):
`<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` (or `.wav`) and
`<speaker>/<chapter>/<speaker>-<chapter>.trans.txt` with lines `<utterance id> <TRANSCRIPT>`.

Output in OUTPUT_DIR:
- `<split>-00000-of-00008.tfrecord` …: the shards, in `tfkd.data.records`' schema;
- `<split>-00000-of-00008.stats.json` …: per-shard statistics, written after the shard and so
  also the mark that the shard is finished (resume skips shards whose mark matches);
- `<split>.manifest.json`: counts, hours, problems by kind, vocabulary coverage.

Bad input never stops the run and is never written: each case is reported on stderr with the
file name and counted under `problems` in the manifest (see `PROBLEM_KINDS`); the summary line
with the counts is also logged at INFO. A corrupt FLAC cannot hang a run: libFLAC checks frame
CRCs and each decode is bounded in time (`audio_io.decode`). Pool workers exit when the parent
dies, even by SIGKILL (`shard_writer.exit_with_parent`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import math
import multiprocessing
import os
import sys
import time
import unicodedata
from collections.abc import Iterator

from tqdm import tqdm

from tfkd.data import audio_io, records, shard_writer
from tfkd.data.shard_writer import shard_name, shard_pattern  # noqa: F401  (public here too)
from tfkd.data.tokenizer import UNK_ID, Tokenizer

PROBLEM_KINDS = (
    "corrupt_audio",  # undecodable, truncated, failed frame CRC, or decoding timed out
    "unsupported_audio",  # not mono 16-bit
    "wrong_sample_rate",  # not at the target rate and resampling not asked for
    "too_short",  # shorter than one feature window (`shard_writer.MIN_SECONDS`)
    "missing_audio",  # transcript line without an audio file
    "missing_transcript",  # audio file without a transcript line
    "empty_transcript",  # transcript line with no words
    "duplicate_utterance",  # the same utterance id twice
)
AUDIO_EXTENSIONS = (".flac", ".wav")
TRANSCRIPT_SUFFIX = ".trans.txt"
DEFAULT_SHARD_SIZE = 500
# Bump when what a shard holds changes, so that resume rewrites old shards.
# 2: libFLAC decoding, too-short audio and zero-width-only transcripts skipped.
_FORMAT_VERSION = 2

logger = logging.getLogger(__name__)


class PrepareError(ValueError):
    """An expected failure (bad arguments or input tree); the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One utterance found on disk, not yet decoded."""

    utterance_id: str
    speaker_id: str
    audio_path: str
    text: str  # normalised (lower case)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One skipped input, with a message that names the file."""

    kind: str  # one of PROBLEM_KINDS
    path: str
    message: str


def normalize_text(text: str) -> str:
    """LibriSpeech transcripts are upper case; tfkd stores lower case, single spaces.

    Invisible format characters (Unicode category Cf: zero-width space U+200B, joiners, BOM U+FEFF,
    soft hyphen) are removed first: `str.split` does not treat them as spaces, so a line of only
    U+200B would otherwise be a one-"word" transcript with no tokens.
    """
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return " ".join(text.split()).lower()


def read_transcripts(root: str) -> Iterator[tuple[str, int, str, str]]:
    """Yields `(trans_path, line_number, utterance_id, normalised_text)` for every line.

    Walks `root` in sorted order; blank lines are skipped, empty transcripts yielded as "".
    """
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            if not fn.endswith(TRANSCRIPT_SUFFIX):
                continue
            path = os.path.join(dirpath, fn)
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    parts = line.split(maxsplit=1)
                    if parts:
                        text = normalize_text(parts[1]) if len(parts) > 1 else ""
                        yield path, lineno, parts[0], text


def scan(root: str) -> tuple[list[Source], list[Problem]]:
    """Pairs audio files with transcript lines under `root`.

    Returns:
        The usable utterances sorted by id, and the problems found without decoding audio
        (`missing_audio`, `missing_transcript`, `empty_transcript`, `duplicate_utterance`).

    Raises:
        FileNotFoundError: if `root` is not a directory.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"{root}: not a directory; give the root of a LibriSpeech-layout tree "
            "(e.g. LibriSpeech/dev-clean)"
        )
    problems: list[Problem] = []
    transcripts: dict[str, tuple[str, str, int]] = {}
    for path, lineno, uid, text in read_transcripts(root):
        if uid in transcripts:
            first = transcripts[uid]
            problems.append(
                Problem(
                    "duplicate_utterance",
                    path,
                    f"{path}:{lineno}: second transcript line for {uid} "
                    f"(first at {first[1]}:{first[2]}); kept the first",
                )
            )
            continue
        transcripts[uid] = (text, path, lineno)
    audio: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            stem, ext = os.path.splitext(fn)
            if ext.lower() not in AUDIO_EXTENSIONS:
                continue
            path = os.path.join(dirpath, fn)
            if stem in audio:
                problems.append(
                    Problem(
                        "duplicate_utterance",
                        path,
                        f"{path}: second audio file for {stem} (first {audio[stem]}); "
                        "kept the first",
                    )
                )
                continue
            audio[stem] = path
    sources = []
    for uid in sorted(set(transcripts) | set(audio)):
        if uid not in audio:
            text, path, lineno = transcripts[uid]
            problems.append(
                Problem(
                    "missing_audio",
                    path,
                    f"{path}:{lineno}: transcript line for {uid} has no audio file "
                    f"({uid}.flac) under {root}; skipped",
                )
            )
        elif uid not in transcripts:
            problems.append(
                Problem(
                    "missing_transcript",
                    audio[uid],
                    f"{audio[uid]}: no transcript line for {uid} in any *{TRANSCRIPT_SUFFIX}; "
                    "skipped",
                )
            )
        elif not transcripts[uid][0]:
            _, path, lineno = transcripts[uid]
            problems.append(
                Problem(
                    "empty_transcript",
                    audio[uid],
                    f"{path}:{lineno}: empty transcript for {uid}; skipped {audio[uid]}",
                )
            )
        else:
            speaker = uid.split("-", 1)[0]
            sources.append(Source(uid, speaker, audio[uid], transcripts[uid][0]))
    return sources, problems


def manifest_path(output_dir: str, split: str) -> str:
    return os.path.join(output_dir, f"{split}.manifest.json")


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _vocabulary(stats: list[dict], tokenizer) -> dict:
    words: collections.Counter = collections.Counter()
    for s in stats:
        words.update(s["word_counts"])
    vocab = {"num_words": sum(words.values()), "num_word_types": len(words)}
    if tokenizer is None:
        return vocab
    pieces: collections.Counter = collections.Counter()
    for s in stats:
        pieces.update({int(k): v for k, v in s["piece_counts"].items()})
    num_tokens = sum(s["num_tokens"] for s in stats)
    oov_words = sum(s["oov_words"] for s in stats)
    oov_types = sum(1 for w in words if UNK_ID in tokenizer.encode(w))
    real_pieces = tokenizer.vocab_size - 2  # minus blank and unk
    used = sum(1 for k in pieces if k > 1)
    vocab.update(
        {
            "vocab_size": tokenizer.vocab_size,
            "num_tokens": num_tokens,
            "tokens_per_word": num_tokens / max(vocab["num_words"], 1),
            "unk_token_rate": sum(s["num_unk_tokens"] for s in stats) / max(num_tokens, 1),
            # A word is out of vocabulary when SentencePiece can only spell it with <unk>.
            "word_oov_rate": oov_words / max(vocab["num_words"], 1),
            "word_coverage": 1.0 - oov_words / max(vocab["num_words"], 1),
            "word_type_oov_rate": oov_types / max(len(words), 1),
            "pieces_used": used,
            "piece_coverage": used / max(real_pieces, 1),
        }
    )
    return vocab


def prepare(
    input_dir: str,
    output_dir: str,
    split: str | None = None,
    spm_model: str | None = None,
    num_shards: int | None = None,
    shard_size: int | None = None,
    jobs: int = 1,
    resample: bool = False,
    sample_rate: int = records.SAMPLE_RATE,
    verify: bool = True,
    progress: bool = True,
    decode_timeout_s: float = audio_io.DEFAULT_TIMEOUT_S,
) -> dict:
    """Converts a LibriSpeech-layout directory into sharded TFRecords and a manifest.

    Re-running with the same inputs and options skips shards that are finished and intact
    (with `verify`, every record's CRC is read back) and rewrites the rest.

    Args:
        input_dir: root of the LibriSpeech-layout tree (e.g. `LibriSpeech/dev-clean`).
        output_dir: where shards and `<split>.manifest.json` go (created).
        split: shard name prefix; defaults to the input directory's name.
        spm_model: optional SentencePiece model (`tokenizer.Tokenizer`) for `token_ids`.
        num_shards: number of shards; or derive it from `shard_size` utterances per shard
            (default 500). Never more shards than utterances.
        jobs: worker processes (spawned, one shard at a time each).
        resample: resample audio that is not at `sample_rate` instead of skipping it.
        sample_rate: target rate in Hz.
        verify: read finished shards back before skipping them.
        progress: show a tqdm bar on stderr.
        decode_timeout_s: the longest one file may take to decode; a file that takes longer is
            counted as `corrupt_audio` (the decoder is killed), so a corrupt file never hangs.

    Returns:
        The manifest dict (also written to `<output_dir>/<split>.manifest.json`).

    Raises:
        FileNotFoundError: `input_dir` is missing. PrepareError (a ValueError): bad option
        values, a missing `spm_model`, or no audio and no transcript at all under `input_dir`.
    """
    if num_shards is not None and shard_size is not None:
        raise PrepareError("give num_shards or shard_size, not both")
    if (num_shards is not None and num_shards < 1) or (shard_size is not None and shard_size < 1):
        raise PrepareError("num_shards and shard_size must be positive")
    if jobs < 1:
        raise PrepareError(f"jobs must be positive, got {jobs}")
    if not decode_timeout_s > 0:
        raise PrepareError(f"decode_timeout_s must be positive, got {decode_timeout_s}")
    if spm_model and not os.path.isfile(spm_model):
        raise PrepareError(
            f"{spm_model}: no such SentencePiece model; make one with tools/train_spm.py"
        )
    split = split or os.path.basename(os.path.normpath(input_dir))

    def say(msg: str) -> None:
        tqdm.write(msg, file=sys.stderr)

    sources, scan_problems = scan(input_dir)
    if not sources and not scan_problems:
        raise PrepareError(
            f"{input_dir}: no audio ({'/'.join(AUDIO_EXTENSIONS)}) and no *{TRANSCRIPT_SUFFIX} "
            "found; expected LibriSpeech layout <speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac"
        )
    for p in scan_problems:
        say(p.message)
    if num_shards is None:
        num_shards = math.ceil(len(sources) / (shard_size or DEFAULT_SHARD_SIZE))
    num_shards = max(1, min(num_shards, len(sources)))
    os.makedirs(output_dir, exist_ok=True)
    shard_writer.remove_stale(output_dir, split, num_shards, say)

    tokenizer = None
    options = {"format": _FORMAT_VERSION, "sample_rate": sample_rate, "resample": resample}
    if spm_model:
        tokenizer = Tokenizer(spm_model)
        options["spm_sha256"] = _file_digest(spm_model)
    tasks = []
    for i in range(num_shards):
        # Round-robin so that every shard mixes speakers (sources are sorted by speaker).
        part = [dataclasses.asdict(s) for s in sources[i::num_shards]]
        tasks.append(
            {
                "name": shard_name(split, i, num_shards),
                "output_dir": output_dir,
                "sources": part,
                "fingerprint": shard_writer.fingerprint(part, options),
                "spm_model": spm_model,
                "sample_rate": sample_rate,
                "resample": resample,
                "verify": verify,
                "decode_timeout_s": decode_timeout_s,
            }
        )

    results = _run(tasks, len(sources), jobs, progress, say)

    problems = [dataclasses.asdict(p) for p in scan_problems]
    for r in sorted(results, key=lambda r: r["name"]):
        problems.extend(r["problems"])
    counts = {k: 0 for k in PROBLEM_KINDS}
    for p in problems:
        counts[p["kind"]] += 1
    num_records = sum(r["num_records"] for r in results)
    seconds = sum(r["seconds"] for r in results)
    written = [r for r in results if r["num_records"]]
    manifest = {
        "split": split,
        "input_dir": os.path.abspath(input_dir),
        "output_dir": os.path.abspath(output_dir),
        "shards": sorted(r["name"] for r in results),
        "shards_skipped": sorted(r["name"] for r in results if r["skipped"]),
        "sample_rate": sample_rate,
        "spm_model": os.path.abspath(spm_model) if spm_model else None,
        "num_candidates": len(sources),  # utterances with audio and transcript, before decoding
        "num_utterances": num_records,
        "num_speakers": len({s for r in results for s in r["speakers"]}),
        "seconds": seconds,
        "hours": seconds / 3600.0,
        "min_seconds": min((r["min_seconds"] for r in written), default=0.0),
        "max_seconds": max((r["max_seconds"] for r in written), default=0.0),
        "problems": counts,
        "num_problems": len(problems),
        "problem_messages": [p["message"] for p in problems],
        "vocabulary": _vocabulary(results, tokenizer),
    }
    shard_writer.write_json_atomic(manifest_path(output_dir, split), manifest)
    detail = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    summary = (
        f"{split}: {num_records} utterances, {manifest['hours']:.3f} h in {num_shards} shards "
        f"({len(manifest['shards_skipped'])} already done); "
        + (f"{len(problems)} inputs skipped ({detail})" if problems else "no input skipped")
        + f"; manifest {manifest_path(output_dir, split)}"
    )
    say(summary)
    logger.info(summary)
    return manifest


def _run(tasks: list[dict], total: int, jobs: int, progress: bool, say) -> list[dict]:
    """Runs the shard tasks in this process (jobs=1) or a spawned pool, with a progress bar."""
    results = []
    bar = tqdm(total=total, unit="utt", disable=not progress, file=sys.stderr, dynamic_ncols=True)

    def finish(task: dict, result: dict) -> None:
        result["name"] = task["name"]
        if result["skipped"]:
            say(f"{task['name']}: finished earlier and intact; skipped")
        elif result["rewrite_reason"]:
            say(f"{task['name']}: rewritten because {result['rewrite_reason']}")
        for p in result["problems"] if not result["skipped"] else []:
            say(p["message"])
        results.append(result)

    try:
        if jobs == 1 or len(tasks) == 1:
            saved = shard_writer.set_progress(bar.update)
            try:
                for task in tasks:
                    finish(task, shard_writer.write_shard(task))
            finally:
                shard_writer.set_progress(saved)
        else:
            # Spawn, not fork: the parent may already run TF threads, which fork can deadlock.
            ctx = multiprocessing.get_context("spawn")
            counter = ctx.Value("q", 0)
            with ctx.Pool(min(jobs, len(tasks)), shard_writer.init_worker, (counter,)) as pool:
                pending = [(t, pool.apply_async(shard_writer.write_shard, (t,))) for t in tasks]
                while pending:
                    for item in [p for p in pending if p[1].ready()]:
                        pending.remove(item)
                        finish(item[0], item[1].get())
                    bar.update(counter.value - bar.n)
                    time.sleep(0.1)
            bar.update(counter.value - bar.n)
    finally:
        bar.close()
    return results
