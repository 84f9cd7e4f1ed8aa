"""Builds tfkd's offline speech corpus in LibriSpeech layout from Debian's TTS engines.

Layout: ``OUT/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` with one
``<speaker>-<chapter>.trans.txt`` per chapter (``<utt-id> UPPER CASE TEXT``), plus
``OUT/SPEAKERS.txt`` and ``OUT/manifest.json`` (speaker configurations, counts and hours).

Splits are disjoint in speakers and in sentences (the optional `train-respoken` speaks
`train-labeled`'s sentences again; the optional `train-pool` speaks sentences no other split uses).
Everything is drawn from one seed in the main process and every utterance has its own generator,
so the corpus does not depend on `jobs`.
"""

import dataclasses
import json
import multiprocessing
import os

import numpy as np
import soundfile as sf
import tqdm

from tfkd.data import augment, text_pool, tts

SPLITS = ("train-labeled", "train-unlabeled", "dev", "test")
# espeak-ng sounds least natural, so it stays a minority of the speakers.
ENGINE_SHARE = {"flite": 0.45, "festival": 0.35, "espeak-ng": 0.20}
FIRST_SPEAKER_ID = 1000
FIRST_CHAPTER_ID = 10000
# `--respoken K`: train-labeled's sentences spoken again by new speakers (more training audio).
RESPOKEN = "train-respoken"
RESPOKEN_STREAM = 7919  # generator stream of the respoken split, apart from the corpus plan
RESPOKEN_FIRST_SPEAKER_ID = 100000
RESPOKEN_FIRST_CHAPTER_ID = 1000000
RESPOKEN_ID_STRIDE = 10000  # ids of rendition k start at FIRST + k * STRIDE
# `--pool N`: an unlabelled pool of N utterances of sentences that no other split uses, spoken by
# new speakers (e.g. to pseudo-label far more audio than train-labeled).
POOL = "train-pool"
POOL_STREAM = 7927  # generator stream of the pool split, apart from the corpus plan
POOL_FIRST_SPEAKER_ID = 50000  # below RESPOKEN_FIRST_SPEAKER_ID, above the main splits' ids
POOL_FIRST_CHAPTER_ID = 500000  # below RESPOKEN_FIRST_CHAPTER_ID
EXTRA_SPLITS = (RESPOKEN, POOL)  # optional splits, in the manifest's order


@dataclasses.dataclass(frozen=True)
class Preset:
    """Corpus size: utterances and speakers per split, chapter length, vocabulary limit."""

    utterances: dict
    speakers: dict
    chapter_size: int
    vocab_limit: int | None


PRESETS = {
    "tiny": Preset(
        {"train-labeled": 16, "train-unlabeled": 8, "dev": 6, "test": 6},
        {"train-labeled": 4, "train-unlabeled": 2, "dev": 2, "test": 2},
        chapter_size=4,
        vocab_limit=1000,
    ),
    # 1,000 words leave ~34.6k pool sentences (~3% WordNet): every utterance gets its own
    # sentence, in a domain that a small CPU model can learn.
    "small": Preset(
        {"train-labeled": 5000, "train-unlabeled": 4000, "dev": 500, "test": 500},
        {"train-labeled": 50, "train-unlabeled": 40, "dev": 10, "test": 10},
        chapter_size=25,
        vocab_limit=1000,
    ),
    # 2,000 words leave ~53k sentences, enough for 50k distinct utterances.
    "medium": Preset(
        {"train-labeled": 25000, "train-unlabeled": 22000, "dev": 1500, "test": 1500},
        {"train-labeled": 250, "train-unlabeled": 220, "dev": 30, "test": 30},
        chapter_size=25,
        vocab_limit=2000,
    ),
}


@dataclasses.dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: its id, split, TTS voice and channel augmentation."""

    speaker_id: int
    split: str
    voice: tts.Voice
    channel: augment.Channel


@dataclasses.dataclass(frozen=True)
class Chapter:
    """One unit of work: a speaker's consecutive utterances, rendered by one worker."""

    speaker: Speaker
    chapter_id: int
    texts: tuple
    sources: tuple

    def utt_ids(self) -> list[str]:
        s, c = self.speaker.speaker_id, self.chapter_id
        return [f"{s}-{c}-{i:04d}" for i in range(len(self.texts))]

    def directory(self, out_dir: str) -> str:
        s = self.speaker
        return os.path.join(out_dir, s.split, str(s.speaker_id), str(self.chapter_id))


def _largest_remainder(total: int, shares: dict) -> dict:
    """Splits `total` into integer parts proportional to `shares` (ties: dict order)."""
    exact = {k: total * v for k, v in shares.items()}
    counts = {k: int(v) for k, v in exact.items()}
    order = sorted(shares, key=lambda k: -(exact[k] - counts[k]))
    for k in order[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def _sample_voice(engine: str, base: str, rng: np.random.Generator) -> tts.Voice:
    rate = round(float(rng.uniform(0.85, 1.15)), 3)
    pitch = round(float(rng.uniform(-2.5, 2.5)), 2)
    if engine == "espeak-ng":
        variant = tts.ESPEAK_VARIANTS[int(rng.integers(len(tts.ESPEAK_VARIANTS)))]
        base = f"{base}+{variant}" if variant else base
    return tts.Voice(engine, base, rate, pitch)


def plan_speakers(preset: Preset, rng: np.random.Generator) -> list[Speaker]:
    """Draws every split's speakers, with each engine's voices used in turn across splits."""
    bases = _shuffled_voices(rng)
    used = dict.fromkeys(bases, 0)
    speakers = []
    for split in SPLITS:
        first = FIRST_SPEAKER_ID + len(speakers)
        speakers += _draw_speakers(split, preset.speakers[split], first, bases, used, rng)
    return speakers


def _shuffled_voices(rng: np.random.Generator) -> dict:
    """Each engine's base voices in a random order (drawn from `rng`)."""
    bases = {
        "flite": list(tts.FLITE_VOICES),
        "festival": list(tts.FESTIVAL_VOICES),
        "espeak-ng": list(tts.ESPEAK_ACCENTS),
    }
    for names in bases.values():
        rng.shuffle(names)
    return bases


def _draw_speakers(split, count, first_id, bases, used, rng) -> list[Speaker]:
    """`count` speakers of one split, engines by `ENGINE_SHARE`, each engine's `bases` in turn
    (`used` counts the voices taken so far and is updated)."""
    speakers = []
    for engine, n in _largest_remainder(count, ENGINE_SHARE).items():
        for _ in range(n):
            base = bases[engine][used[engine] % len(bases[engine])]
            used[engine] += 1
            voice = _sample_voice(engine, base, rng)
            channel = augment.sample_channel(rng)
            speakers.append(Speaker(first_id + len(speakers), split, voice, channel))
    return speakers


def assign_sentences(
    pool: list[text_pool.Sentence], preset: Preset, rng: np.random.Generator
) -> dict:
    """Gives each split its sentences; no sentence is shared between splits.

    dev and test always get distinct sentences. When the pool is too small for distinct training
    sentences, the two training splits share what is left in proportion and repeat it (with
    different speakers).

    Returns:
      split -> list of Sentence, of the preset's length.
    """
    return _split_sentences(pool, preset, rng)[0]


def _split_sentences(
    pool: list[text_pool.Sentence], preset: Preset, rng: np.random.Generator
) -> tuple[dict, list]:
    """`assign_sentences`' splits and the pool's sentences that none of them uses (the rest of
    the same permutation, in its order: the `train-pool` split's sentences)."""
    need = preset.utterances
    held_out = need["dev"] + need["test"]
    if len(pool) < held_out + 2:
        raise ValueError(f"The text pool has {len(pool)} sentences; {held_out + 2} are needed.")
    order = rng.permutation(len(pool))
    rest = len(pool) - held_out
    labeled, unlabeled = need["train-labeled"], need["train-unlabeled"]
    if labeled + unlabeled > rest:  # share the rest in proportion, at least one sentence each
        labeled = min(rest - 1, max(1, round(rest * labeled / (labeled + unlabeled))))
        unlabeled = rest - labeled
    avail = {"dev": need["dev"], "test": need["test"]}
    avail.update({"train-labeled": labeled, "train-unlabeled": unlabeled})
    out, start = {}, 0
    for split in ("dev", "test", "train-labeled", "train-unlabeled"):
        idx = order[start : start + avail[split]]
        start += avail[split]
        out[split] = [pool[idx[i % len(idx)]] for i in range(need[split])]
    return out, [pool[i] for i in order[start:]]


def plan_corpus(
    size: str, seed: int, vocab_limit: int | None = None, pool: list | None = None
) -> list[Chapter]:
    """Plans the whole corpus (speakers, chapters, texts) from the seed, without audio.

    Args:
      size: "tiny", "small" or "medium".
      seed: the corpus seed.
      vocab_limit: overrides the preset's limit; 0 means no limit.
      pool: the sentence pool (default: `text_pool.build_pool` with the limit).
    """
    return _plan(size, seed, vocab_limit, pool)[0]


def unused_sentences(
    size: str, seed: int, vocab_limit: int | None = None, pool: list | None = None
) -> list[text_pool.Sentence]:
    """The sentences of the text pool that no split of `plan_corpus` uses, in the order of the
    corpus' permutation (the same for the same seed): the sentences of `plan_pool`."""
    return _plan(size, seed, vocab_limit, pool)[1]


def _text_pool(size: str, vocab_limit: int | None) -> list[text_pool.Sentence]:
    preset = PRESETS[size]
    limit = preset.vocab_limit if vocab_limit is None else (vocab_limit or None)
    return text_pool.build_pool(vocab_limit=limit)


def _plan(size, seed, vocab_limit, pool) -> tuple[list[Chapter], list]:
    """`plan_corpus`' chapters and `unused_sentences`, from one draw of the corpus generator."""
    preset = PRESETS[size]
    if pool is None:
        pool = _text_pool(size, vocab_limit)
    rng = np.random.default_rng(seed)
    speakers = plan_speakers(preset, rng)
    sentences, unused = _split_sentences(pool, preset, rng)
    chapters = []
    for split in SPLITS:
        group = [s for s in speakers if s.split == split]
        first = FIRST_CHAPTER_ID + len(chapters)
        chapters += _deal_chapters(group, sentences[split], preset.chapter_size, first)
    return chapters, unused


def _deal_chapters(group, texts, chapter_size, first_chapter_id) -> list[Chapter]:
    """Deals `texts` (Sentences, in order) to the speakers of `group` in equal shares, in
    chapters of `chapter_size` numbered from `first_chapter_id`."""
    chapters = []
    per = _largest_remainder(len(texts), {s.speaker_id: 1 / len(group) for s in group})
    start = 0
    for spk in group:
        mine = texts[start : start + per[spk.speaker_id]]
        start += len(mine)
        for c in range(0, len(mine), chapter_size):
            part = mine[c : c + chapter_size]
            chapters.append(
                Chapter(
                    spk,
                    first_chapter_id + len(chapters),
                    tuple(s.text for s in part),
                    tuple(s.source for s in part),
                )
            )
    return chapters


def plan_respoken(chapters: list[Chapter], size: str, seed: int, renditions: int) -> list[Chapter]:
    """The `train-respoken` split: `train-labeled`'s sentences spoken again, `renditions` times.

    Each rendition has as many new speakers as `train-labeled` (fresh voices, rates, pitches and
    channels from the same engines) and deals them the labelled sentences in a new random order.
    Drawn from their own generators (`[seed, RESPOKEN_STREAM, k]`), so the other splits, their
    speakers and their audio are exactly those of the corpus without it.
    """
    preset = PRESETS[size]
    labeled = [
        text_pool.Sentence(text, source)
        for c in chapters
        if c.speaker.split == "train-labeled"
        for text, source in zip(c.texts, c.sources, strict=True)
    ]
    out = []
    for k in range(renditions):
        rng = np.random.default_rng([seed, RESPOKEN_STREAM, k])
        bases = _shuffled_voices(rng)
        count = preset.speakers["train-labeled"]
        first = RESPOKEN_FIRST_SPEAKER_ID + k * RESPOKEN_ID_STRIDE
        group = _draw_speakers(RESPOKEN, count, first, bases, dict.fromkeys(bases, 0), rng)
        texts = [labeled[i] for i in rng.permutation(len(labeled))]
        first_chapter = RESPOKEN_FIRST_CHAPTER_ID + k * RESPOKEN_ID_STRIDE
        out += _deal_chapters(group, texts, preset.chapter_size, first_chapter)
    return out


def pool_speakers(size: str, count: int) -> int:
    """Speakers of a `train-pool` of `count` utterances: `count` scaled by the preset's
    train-unlabeled speakers per utterance, at least 1 (and at most `count`)."""
    preset = PRESETS[size]
    per = preset.speakers["train-unlabeled"] / preset.utterances["train-unlabeled"]
    return min(count, max(1, round(count * per)))


def plan_pool(
    size: str, seed: int, count: int, vocab_limit: int | None = None, pool: list | None = None
) -> list[Chapter]:
    """The `train-pool` split: `count` utterances of new sentences, spoken by new speakers.

    Its sentences are the first `count` of `unused_sentences` (no other split speaks them, and a
    larger pool keeps the sentences of a smaller one); its `pool_speakers` speakers are drawn
    from their own generator (`[seed, POOL_STREAM]`), with ids from `POOL_FIRST_SPEAKER_ID` and
    chapters from `POOL_FIRST_CHAPTER_ID`. The other splits, their speakers and their audio are
    exactly those of the corpus without it.

    Args:
      size, seed, vocab_limit, pool: those of `plan_corpus` (`pool` is the sentence pool).
      count: utterances of the split (`--pool`); 0 gives no chapters.

    Raises:
      ValueError: count < 0, or fewer unused sentences than `count` (no sentence is repeated).
    """
    if count < 0:
        raise ValueError(f"pool_size must be >= 0, got {count}")
    if count == 0:
        return []
    unused = unused_sentences(size, seed, vocab_limit, pool)
    if len(unused) < count:
        raise ValueError(
            f"A {POOL} of {count} utterances needs {count} new sentences, but the text pool "
            f"leaves only {len(unused)} unused by the other splits of the {size!r} corpus; use a "
            f"larger --vocab_limit or a smaller --pool."
        )
    rng = np.random.default_rng([seed, POOL_STREAM])
    bases = _shuffled_voices(rng)
    n = pool_speakers(size, count)
    group = _draw_speakers(POOL, n, POOL_FIRST_SPEAKER_ID, bases, dict.fromkeys(bases, 0), rng)
    return _deal_chapters(group, unused[:count], PRESETS[size].chapter_size, POOL_FIRST_CHAPTER_ID)


def _utterance_rng(seed: int, chapter: Chapter, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, chapter.speaker.speaker_id, chapter.chapter_id, index])


def _trans_path(chapter: Chapter, out_dir: str) -> str:
    s = chapter.speaker.speaker_id
    return os.path.join(chapter.directory(out_dir), f"{s}-{chapter.chapter_id}.trans.txt")


def render_chapter(out_dir: str, seed: int, chapter: Chapter) -> list[dict]:
    """Synthesises, augments and writes one chapter; skips it when it is already complete.

    Runs in a worker process. Files are written under temporary names and renamed, and the
    transcript comes last, so an interrupted build never leaves a chapter that looks complete.

    Returns:
      One record per utterance: id, split, speaker, seconds, source and the drawn gain/SNR.
    """
    d = chapter.directory(out_dir)
    ids = chapter.utt_ids()
    flacs = [os.path.join(d, f"{u}.flac") for u in ids]
    trans = _trans_path(chapter, out_dir)
    channel = chapter.speaker.channel
    if os.path.exists(trans) and all(os.path.exists(p) for p in flacs):
        samples = [sf.info(p).frames for p in flacs]
        rngs = [_utterance_rng(seed, chapter, i) for i in range(len(ids))]
        drawn = [augment.draw_utterance(channel, rng) for rng in rngs]
    else:
        os.makedirs(d, exist_ok=True)
        fx = augment.sox_effects(channel)
        waves = tts.synthesize(chapter.speaker.voice, list(chapter.texts), [fx] * len(ids))
        samples, drawn = [], []
        for i, (wave, path) in enumerate(zip(waves, flacs, strict=True)):
            out, values = augment.apply_channel(wave, channel, _utterance_rng(seed, chapter, i))
            sf.write(path + ".part", out, tts.SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            os.replace(path + ".part", path)
            samples.append(len(out))
            drawn.append(values)
        lines = "".join(f"{u} {t.upper()}\n" for u, t in zip(ids, chapter.texts, strict=True))
        with open(trans + ".part", "w") as f:
            f.write(lines)
        os.replace(trans + ".part", trans)
    return [
        {
            "id": u,
            "split": chapter.speaker.split,
            "speaker": chapter.speaker.speaker_id,
            "seconds": n / tts.SAMPLE_RATE,
            "source": src,
            **values,
        }
        for u, n, src, values in zip(ids, samples, chapter.sources, drawn, strict=True)
    ]


def _render_star(args):
    return render_chapter(*args)


def _speaker_entry(s: Speaker) -> dict:
    return {"split": s.split, **dataclasses.asdict(s.voice), **dataclasses.asdict(s.channel)}


def write_manifest(out_dir: str, size: str, seed: int, chapters: list, records: list) -> dict:
    """Writes manifest.json, SPEAKERS.txt and utterances.tsv; returns the manifest.

    Only quantities that depend on the seed go in, so equal seeds give identical files. Lists the
    splits of `chapters`: the four main ones and those of `EXTRA_SPLITS` that the call built.
    """
    speakers = {c.speaker.speaker_id: c.speaker for c in chapters}
    by_split = {}
    built = {c.speaker.split for c in chapters}
    for split in SPLITS + tuple(s for s in EXTRA_SPLITS if s in built):
        recs = [r for r in records if r["split"] == split]
        spk = [s for s in speakers.values() if s.split == split]
        by_split[split] = {
            "utterances": len(recs),
            "speakers": len(spk),
            "chapters": sum(c.speaker.split == split for c in chapters),
            "hours": round(sum(r["seconds"] for r in recs) / 3600, 4),
            "wordnet_sentences": sum(r["source"] == "wordnet" for r in recs),
            "engines": {e: sum(s.voice.engine == e for s in spk) for e in ENGINE_SHARE},
        }
    manifest = {
        "size": size,
        "seed": seed,
        "sample_rate": tts.SAMPLE_RATE,
        "splits": by_split,
        "speakers": {str(k): _speaker_entry(v) for k, v in sorted(speakers.items())},
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    minutes = {}
    for r in records:
        minutes[r["speaker"]] = minutes.get(r["speaker"], 0.0) + r["seconds"] / 60
    with open(os.path.join(out_dir, "SPEAKERS.txt"), "w") as f:
        f.write(
            ";ID  |SUBSET          |MINUTES|ENGINE   |VOICE                  |RATE |PITCH|NOISE\n"
        )
        for k, s in sorted(speakers.items()):
            v, ch = s.voice, s.channel
            noise = f"{ch.noise}@{ch.snr_db:.1f}dB" if ch.noise else "none"
            f.write(
                f"{k:<5}|{s.split:<16}|{minutes.get(k, 0):7.2f}|{v.engine:<9}|{v.voice:<23}|"
                f"{v.rate:5.3f}|{v.pitch:+5.2f}|{noise}\n"
            )
    with open(os.path.join(out_dir, "utterances.tsv"), "w") as f:
        f.write("id\tsplit\tseconds\tsource\tgain_db\tsnr_db\n")
        for r in sorted(records, key=lambda r: r["id"]):
            snr = r.get("snr_db", "")
            f.write(f"{r['id']}\t{r['split']}\t{r['seconds']:.4f}\t{r['source']}\t")
            f.write(f"{r['gain_db']}\t{snr}\n")
    return manifest


def build_corpus(
    out_dir: str,
    size: str = "tiny",
    seed: int = 0,
    jobs: int = 2,
    vocab_limit: int | None = None,
    progress: bool = True,
    pool: list | None = None,
    respoken: int = 0,
    pool_size: int = 0,
) -> dict:
    """Builds (or completes) the corpus in `out_dir`.

    Args:
      out_dir: output directory; complete chapters already there are kept.
      size: "tiny", "small" or "medium".
      seed: corpus seed: the same seed gives identical transcripts and audio.
      jobs: worker processes.
      vocab_limit: overrides the preset's vocabulary limit; 0 means no limit.
      progress: show a tqdm bar on stderr.
      pool: optional pre-built sentence pool (tests); defaults to WordNet + KJV.
      respoken: renditions of `train-labeled` in the extra `train-respoken` split
        (`plan_respoken`); the other splits do not change.
      pool_size: utterances of the extra unlabelled `train-pool` split (`plan_pool`): sentences
        no other split uses, new speakers; the other splits do not change.

    The manifest lists the four main splits and the extra ones of this call: a later call on the
    same `out_dir` must repeat `respoken` and `pool_size` to keep them listed (their audio on disk
    is kept either way, and complete chapters are not synthesised again).

    Returns:
      The manifest (also written to out_dir/manifest.json).

    Raises:
      tts.MissingEngineError: a TTS engine or sox is missing.
      ValueError: a bad argument, or too few unused sentences for `pool_size` (`plan_pool`).
    """
    if size not in PRESETS:
        raise ValueError(f"Unknown size {size!r}; use one of {sorted(PRESETS)}")
    tts.check_engines(ENGINE_SHARE)
    if respoken < 0:
        raise ValueError(f"respoken must be >= 0, got {respoken}")
    if pool_size < 0:
        raise ValueError(f"pool_size must be >= 0, got {pool_size}")
    if pool is None:
        pool = _text_pool(size, vocab_limit)
    chapters = plan_corpus(size, seed, vocab_limit, pool)
    chapters += plan_respoken(chapters, size, seed, respoken)
    chapters += plan_pool(size, seed, pool_size, vocab_limit, pool)
    os.makedirs(out_dir, exist_ok=True)
    tasks = [(out_dir, seed, c) for c in chapters]
    total = sum(len(c.texts) for c in chapters)
    records = []
    with tqdm.tqdm(total=total, unit="utt", disable=not progress, desc=f"corpus {size}") as bar:
        if jobs <= 1:
            results = map(_render_star, tasks)
            for recs in results:
                records += recs
                bar.update(len(recs))
        else:
            # forkserver: workers need not inherit a parent that may have TensorFlow loaded.
            ctx = multiprocessing.get_context("forkserver")
            with ctx.Pool(jobs) as workers:
                for recs in workers.imap_unordered(_render_star, tasks):
                    records += recs
                    bar.update(len(recs))
    return write_manifest(out_dir, size, seed, chapters, records)


def build_tiny_corpus(out_dir: str, seed: int = 0, jobs: int = 2) -> dict:
    """Builds the `tiny` preset (36 utterances, 10 speakers) for tests; see `build_corpus`."""
    return build_corpus(out_dir, "tiny", seed=seed, jobs=jobs, progress=False)
