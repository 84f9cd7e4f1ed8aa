import glob
import json
import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
from fixtures_corpus import TINY_SEED

from tfkd.data import augment, synthetic_corpus, text_pool, tts
from tfkd.study import jobs as jobs_lib

TINY = synthetic_corpus.PRESETS["tiny"]


def _transcripts(root) -> dict:
    """split -> {utt_id: text} read from every trans.txt under root."""
    out = {}
    for split in synthetic_corpus.SPLITS:
        out[split] = {}
        for path in glob.glob(os.path.join(root, split, "*", "*", "*.trans.txt")):
            for line in open(path):
                utt, text = line.rstrip("\n").split(" ", 1)
                out[split][utt] = text
    return out


def _audio(root) -> dict:
    return {
        os.path.relpath(p, root): sf.read(p, dtype="int16")[0]
        for p in sorted(glob.glob(os.path.join(root, "*", "*", "*", "*.flac")))
    }


def test_librispeech_layout_and_transcript_format(tiny_corpus):
    for split in synthetic_corpus.SPLITS:
        chapters = glob.glob(os.path.join(tiny_corpus, split, "*", "*"))
        assert chapters, split
        for chapter_dir in chapters:
            spk, chap = chapter_dir.split(os.sep)[-2:]
            assert spk.isdigit() and chap.isdigit()
            files = sorted(os.listdir(chapter_dir))
            trans = f"{spk}-{chap}.trans.txt"
            assert trans in files
            lines = open(os.path.join(chapter_dir, trans)).read().splitlines()
            ids = []
            for line in lines:
                assert re.fullmatch(rf"{spk}-{chap}-\d{{4}} [A-Z']+( [A-Z']+){{3,19}}", line), line
                ids.append(line.split(" ", 1)[0])
            assert sorted(f"{u}.flac" for u in ids) + [trans] == files


def test_flac_is_16k_mono_int16_and_not_silent(tiny_corpus):
    paths = glob.glob(os.path.join(tiny_corpus, "*", "*", "*", "*.flac"))
    assert len(paths) == sum(TINY.utterances.values()) == 36
    for path in paths:
        info = sf.info(path)
        assert (info.format, info.subtype, info.samplerate, info.channels) == (
            "FLAC", "PCM_16", 16000, 1,
        )  # fmt: skip
        wave, _ = sf.read(path, dtype="int16")
        assert 0.5 < len(wave) / 16000 < 15
        rms_dbfs = 20 * np.log10(np.sqrt(np.mean(wave.astype(float) ** 2)) / 32768)
        assert -40 < rms_dbfs < -10, path  # -23 dBFS +- 8 dB of gain, before peak limiting


def test_splits_are_disjoint_in_speakers_and_sentences(tiny_corpus):
    trans = _transcripts(tiny_corpus)
    for split in synthetic_corpus.SPLITS:
        assert len(trans[split]) == TINY.utterances[split]
        speakers = os.listdir(os.path.join(tiny_corpus, split))
        assert len(speakers) == TINY.speakers[split]
    for a in synthetic_corpus.SPLITS:
        for b in synthetic_corpus.SPLITS:
            if a < b:
                assert not set(trans[a].values()) & set(trans[b].values()), (a, b)
                spk_a = set(os.listdir(os.path.join(tiny_corpus, a)))
                assert not spk_a & set(os.listdir(os.path.join(tiny_corpus, b))), (a, b)


def test_manifest_matches_files(tiny_corpus):
    manifest = json.load(open(os.path.join(tiny_corpus, "manifest.json")))
    assert manifest["size"] == "tiny" and manifest["seed"] == TINY_SEED
    for split, info in manifest["splits"].items():
        waves = [
            sf.info(p).frames
            for p in glob.glob(os.path.join(tiny_corpus, split, "*", "*", "*.flac"))
        ]
        assert info["utterances"] == len(waves)
        assert info["hours"] == pytest.approx(sum(waves) / 16000 / 3600, abs=1e-4)
    dirs = {p.split(os.sep)[-1] for p in glob.glob(os.path.join(tiny_corpus, "*", "*"))}
    assert set(manifest["speakers"]) == dirs
    engines = {s["engine"] for s in manifest["speakers"].values()}
    assert engines == {"espeak-ng", "flite", "festival"}
    speakers_txt = open(os.path.join(tiny_corpus, "SPEAKERS.txt")).read().splitlines()
    assert len(speakers_txt) == 1 + len(dirs)


def test_speaker_plans_keep_espeak_a_minority_and_use_every_voice():
    for size in ("small", "medium"):
        preset = synthetic_corpus.PRESETS[size]
        speakers = synthetic_corpus.plan_speakers(preset, np.random.default_rng(0))
        assert len(speakers) == sum(preset.speakers.values())
        engines = [s.voice.engine for s in speakers]
        assert engines.count("espeak-ng") / len(engines) == pytest.approx(0.2, abs=0.02)
        voices = {s.voice.voice for s in speakers if s.voice.engine != "espeak-ng"}
        assert voices == set(tts.FLITE_VOICES) | set(tts.FESTIVAL_VOICES)
        noisy = sum(s.channel.noise is not None for s in speakers) / len(speakers)
        assert 0.3 < noisy < 0.7


def test_same_seed_gives_identical_corpus(tiny_corpus, tmp_path):
    # A second build with one process must match the two-process fixture exactly.
    synthetic_corpus.build_corpus(str(tmp_path), "tiny", seed=TINY_SEED, jobs=1, progress=False)
    for name in ("manifest.json", "SPEAKERS.txt", "utterances.tsv"):
        assert (tmp_path / name).read_bytes() == (tiny_corpus / name).read_bytes()
    assert _transcripts(tmp_path) == _transcripts(tiny_corpus)
    first, second = _audio(tiny_corpus), _audio(tmp_path)
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


def test_other_seed_gives_other_corpus(tiny_corpus, tmp_path):
    plan0 = synthetic_corpus.plan_corpus("tiny", TINY_SEED)
    plan1 = synthetic_corpus.plan_corpus("tiny", TINY_SEED + 1)
    assert [c.texts for c in plan0] != [c.texts for c in plan1]
    assert [c.speaker.voice for c in plan0] != [c.speaker.voice for c in plan1]
    # The same chapter rendered under another seed draws other gains (and noise).
    chapter = plan0[0]
    synthetic_corpus.render_chapter(str(tmp_path), TINY_SEED + 1, chapter)
    rel = os.path.relpath(chapter.directory(str(tmp_path)), tmp_path)
    for utt in chapter.utt_ids():
        a = sf.read(tiny_corpus / rel / f"{utt}.flac", dtype="int16")[0]
        b = sf.read(tmp_path / rel / f"{utt}.flac", dtype="int16")[0]
        assert len(a) == len(b) and not np.array_equal(a, b)


def test_resume_rebuilds_only_missing_chapters(tiny_corpus, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny_corpus, out)
    chapter = synthetic_corpus.plan_corpus("tiny", TINY_SEED)[1]
    missing = (
        out / os.path.relpath(chapter.directory(str(out)), out) / f"{chapter.utt_ids()[2]}.flac"
    )
    missing.unlink()
    other = sorted(out.glob("test/*/*/*.flac"))[0]
    stamp = other.stat().st_mtime_ns
    synthetic_corpus.build_corpus(str(out), "tiny", seed=TINY_SEED, jobs=1, progress=False)
    assert other.stat().st_mtime_ns == stamp
    assert missing.read_bytes() == (tiny_corpus / missing.relative_to(out)).read_bytes()
    assert (out / "manifest.json").read_bytes() == (tiny_corpus / "manifest.json").read_bytes()


@pytest.mark.parametrize("color", augment.NOISE_COLORS)
@pytest.mark.parametrize("snr_db", [5.0, 12.5, 25.0])
def test_add_noise_hits_requested_snr(color, snr_db):
    rng = np.random.default_rng(1)
    t = np.arange(32000) / 16000
    speech = 0.1 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    noisy = augment.add_noise(speech, snr_db, color, rng)
    measured = 10 * np.log10(np.sum(speech**2) / np.sum((noisy - speech) ** 2))
    assert measured == pytest.approx(snr_db, abs=0.01)


def test_noise_colours_have_their_spectral_slopes():
    def low_high_density_ratio(color):
        x = augment.colored_noise(160000, color, np.random.default_rng(2))
        power = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(len(x), 1 / 16000)
        low = power[(freqs >= 100) & (freqs < 500)].mean()
        return low / power[(freqs >= 4000) & (freqs < 8000)].mean()

    # Expected per-Hz density ratios of 1/f^0, 1/f and 1/f^2 spectra between the two bands.
    assert low_high_density_ratio("white") == pytest.approx(1.0, rel=0.1)
    assert low_high_density_ratio("pink") == pytest.approx(23.2, rel=0.15)
    assert low_high_density_ratio("brown") == pytest.approx(640, rel=0.15)


def test_apply_channel_sets_level_and_snr_after_quantisation():
    t = np.arange(48000) / 16000
    wave = (8000 * np.sin(2 * np.pi * 180 * t) * np.hanning(len(t))).astype(np.int16)
    channel = augment.Channel(gain_db=-4.0, noise="pink", snr_db=15.0)
    out, drawn = augment.apply_channel(wave, channel, np.random.default_rng(3))
    expected = augment.draw_utterance(channel, np.random.default_rng(3))
    assert drawn == expected
    assert 12.0 <= drawn["snr_db"] <= 18.0 and -6.0 <= drawn["gain_db"] <= -2.0
    clean = wave / 32768.0
    clean *= 10 ** ((augment.REFERENCE_DBFS + drawn["gain_db"]) / 20) / np.sqrt(np.mean(clean**2))
    noise = out / 32767.0 - clean
    measured = 10 * np.log10(np.sum(clean**2) / np.sum(noise**2))
    assert measured == pytest.approx(drawn["snr_db"], abs=0.1)


def test_missing_engine_gives_clear_error(tmp_path, monkeypatch):
    with pytest.raises(tts.MissingEngineError, match=r"flite.*apt-get install -y sox flite"):
        tts.check_engines(["flite"], path=str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(tts.MissingEngineError, match="install_system_deps.sh"):
        synthetic_corpus.build_corpus(str(tmp_path / "out"), "tiny", progress=False)
    assert not (tmp_path / "out").exists()


def test_festival_script_uses_native_rate_and_pitch_controls():
    diphone = tts.festival_script(tts.Voice("festival", "kal_diphone", 1.25, 12.0), ["a b"], ["o"])
    assert "(Parameter.set 'Duration_Stretch 0.8000)" in diphone
    assert "(list 'target_f0_mean 210.0)" in diphone  # one octave above 105 Hz
    hts = tts.Voice("festival", "cmu_us_slt_arctic_hts", 0.9, -1.5)
    assert '(list "-r" 0.9000)' in tts.festival_script(hts, ["a b"], ["o"])
    assert tts.sox_pitch_cents(hts) == -150.0
    assert tts.sox_pitch_cents(tts.Voice("flite", "slt", 1.0, -1.5)) == 0.0


@pytest.mark.slow
def test_make_corpus_cli_builds_tiny(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, os.path.join(root, "tools", "make_corpus.py"), "--size", "tiny",
           "--seed", "3", "--jobs", "2", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert re.search(r"^dev +6 utts +2 speakers", proc.stdout, flags=re.MULTILINE)
    assert json.load(open(tmp_path / "manifest.json"))["seed"] == 3
    assert len(list(tmp_path.glob("*/*/*/*.flac"))) == 36


@pytest.mark.parametrize(
    "voice",
    [tts.Voice("espeak-ng", a) for a in tts.ESPEAK_ACCENTS]
    + [tts.Voice("espeak-ng", "en-us+klatt", 1.15, 2.0)]
    + [tts.Voice("flite", v, 0.9, -1.0) for v in tts.FLITE_VOICES]
    + [tts.Voice("festival", "cmu_us_slt_arctic_hts", 1.1, 1.0)],
    ids=str,
)
def test_every_voice_speaks_at_16k(voice):
    text = "the lord is my shepherd i shall not want"
    (wave,) = tts.synthesize(voice, [text])
    assert wave.dtype == np.int16
    seconds = len(wave) / tts.SAMPLE_RATE
    assert 1.0 < seconds < 5.0  # about 2-4 words per second
    assert np.sqrt(np.mean(wave.astype(float) ** 2)) > 300


@pytest.mark.parametrize("pool_size", [14, 20, 1000])
def test_assign_sentences_keeps_splits_disjoint_even_when_reusing(pool_size):
    pool = [text_pool.Sentence(f"sentence number {i} is here", "kjv") for i in range(pool_size)]
    out = synthetic_corpus.assign_sentences(pool, TINY, np.random.default_rng(0))
    assert {k: len(v) for k, v in out.items()} == TINY.utterances
    assert len(set(out["dev"])) == 6 and len(set(out["test"])) == 6
    distinct = {k: set(v) for k, v in out.items()}
    for a in synthetic_corpus.SPLITS:
        for b in synthetic_corpus.SPLITS:
            assert a == b or not distinct[a] & distinct[b]
    # 14 sentences leave one for each training split; 20 leave 8, shared 5:3 like 16:8.
    expected = {14: (1, 1), 20: (5, 3), 1000: (16, 8)}[pool_size]
    assert (len(distinct["train-labeled"]), len(distinct["train-unlabeled"])) == expected
    with pytest.raises(ValueError, match="13 sentences"):
        synthetic_corpus.assign_sentences(pool[:13], TINY, np.random.default_rng(0))


def test_respoken_plan_speaks_the_labeled_sentences_again_by_new_speakers():
    plan = synthetic_corpus.plan_corpus("tiny", TINY_SEED)
    respoken = synthetic_corpus.plan_respoken(plan, "tiny", TINY_SEED, 2)
    labeled = sorted(t for c in plan if c.speaker.split == "train-labeled" for t in c.texts)
    assert sorted(t for c in respoken for t in c.texts) == sorted(labeled * 2)
    speakers = {c.speaker.speaker_id: c.speaker for c in respoken}
    assert len(speakers) == 2 * TINY.speakers["train-labeled"]
    assert {s.split for s in speakers.values()} == {synthetic_corpus.RESPOKEN}
    assert not set(speakers) & {c.speaker.speaker_id for c in plan}
    assert not {c.chapter_id for c in respoken} & {c.chapter_id for c in plan}
    # Its own generators: the plan of the other splits is that of a corpus without it.
    assert synthetic_corpus.plan_respoken(plan, "tiny", TINY_SEED, 2) == respoken


def test_respoken_split_leaves_the_other_splits_byte_identical(tiny_corpus, tmp_path):
    for split in synthetic_corpus.SPLITS:  # copy the fixture, then add the split
        shutil.copytree(tiny_corpus / split, tmp_path / split)
    manifest = synthetic_corpus.build_corpus(
        str(tmp_path), "tiny", seed=TINY_SEED, jobs=1, progress=False, respoken=1
    )
    respoken = manifest["splits"][synthetic_corpus.RESPOKEN]
    assert respoken["utterances"] == TINY.utterances["train-labeled"]
    assert respoken["speakers"] == TINY.speakers["train-labeled"]
    before = json.loads((tiny_corpus / "manifest.json").read_text())
    for split in synthetic_corpus.SPLITS:
        assert manifest["splits"][split] == before["splits"][split]
    assert _transcripts(tmp_path) == _transcripts(tiny_corpus)
    audio = _audio(tmp_path)
    for key, samples in _audio(tiny_corpus).items():
        np.testing.assert_array_equal(audio[key], samples)
    assert sum(k.startswith(synthetic_corpus.RESPOKEN) for k in audio) == respoken["utterances"]


def test_negative_respoken_raises(tmp_path):
    with pytest.raises(ValueError, match="respoken must be >= 0, got -1"):
        synthetic_corpus.build_corpus(str(tmp_path), "tiny", respoken=-1, progress=False)


def _texts(chapters) -> list[str]:
    return [t for c in chapters for t in c.texts]


def test_pool_plan_speaks_unused_sentences_by_new_speakers():
    plan = synthetic_corpus.plan_corpus("tiny", TINY_SEED)
    respoken = synthetic_corpus.plan_respoken(plan, "tiny", TINY_SEED, 2)
    pool = synthetic_corpus.plan_pool("tiny", TINY_SEED, 8)
    texts = _texts(pool)
    assert len(texts) == len(set(texts)) == 8
    for split in synthetic_corpus.SPLITS:
        split_texts = {t for c in plan if c.speaker.split == split for t in c.texts}
        assert not set(texts) & split_texts, split
    # tiny's train-unlabeled has 2 speakers for 8 utterances: 8 pool utterances get 2 speakers.
    speakers = {c.speaker.speaker_id: c.speaker for c in pool}
    assert sorted(speakers) == [50000, 50001]
    assert {s.split for s in speakers.values()} == {synthetic_corpus.POOL}
    others = {c.speaker.speaker_id for c in plan + respoken}
    assert not set(speakers) & others
    assert not {c.chapter_id for c in pool} & {c.chapter_id for c in plan + respoken}
    assert [c.chapter_id for c in pool] == [500000, 500001]
    # The pool's sentences lead the leftovers of the corpus' permutation: every pool sentence
    # but the 36 distinct sentences of the four splits.
    unused = synthetic_corpus.unused_sentences("tiny", TINY_SEED)
    assert texts == [s.text for s in unused[:8]]
    assert len(unused) == len(text_pool.build_pool(vocab_limit=TINY.vocab_limit)) - 36
    # Same seed, same pool (its own generators); another seed, other sentences and voices.
    assert synthetic_corpus.plan_pool("tiny", TINY_SEED, 8) == pool
    other = synthetic_corpus.plan_pool("tiny", TINY_SEED + 1, 8)
    assert _texts(other) != texts
    assert [c.speaker.voice for c in other] != [c.speaker.voice for c in pool]
    assert synthetic_corpus.plan_pool("tiny", TINY_SEED, 0) == []


@pytest.mark.parametrize(
    "size, count, speakers",
    [("tiny", 1, 1), ("tiny", 5, 1), ("tiny", 8, 2), ("tiny", 100, 25), ("small", 49, 1),
     ("small", 20000, 200), ("medium", 22000, 220)],
)  # fmt: skip
def test_pool_speakers_scale_like_train_unlabeled(size, count, speakers):
    assert synthetic_corpus.pool_speakers(size, count) == speakers


def test_small_pool_of_four_times_the_labelled_set_has_new_sentences():
    plan = synthetic_corpus.plan_corpus("small", 0)
    pool = synthetic_corpus.plan_pool("small", 0, 20000)
    texts = _texts(pool)
    labeled = synthetic_corpus.PRESETS["small"].utterances["train-labeled"]
    assert len(texts) == len(set(texts)) == 20000 == 4 * labeled
    assert not set(texts) & set(_texts(plan))
    assert len({c.speaker.speaker_id for c in pool}) == 200
    assert len(pool) == 800 and {len(c.texts) for c in pool} == {25}
    engines = [c.speaker.voice.engine for c in pool[::4]]  # one chapter of each speaker
    assert {e: engines.count(e) for e in synthetic_corpus.ENGINE_SHARE} == {
        "flite": 90, "festival": 70, "espeak-ng": 40,
    }  # fmt: skip


def test_pool_larger_than_the_unused_sentences_raises(tmp_path):
    # 40 sentences: tiny's four splits take 36, 4 are left for the pool.
    sentences = [text_pool.Sentence(f"sentence number {i} is here", "kjv") for i in range(40)]
    pool = synthetic_corpus.plan_pool("tiny", TINY_SEED, 4, pool=sentences)
    assert len(set(_texts(pool))) == 4
    message = (
        r"^A train-pool of 5 utterances needs 5 new sentences, but the text pool leaves only 4 "
        r"unused by the other splits of the 'tiny' corpus; use a larger --vocab_limit or a "
        r"smaller --pool\.$"
    )
    with pytest.raises(ValueError, match=message):
        synthetic_corpus.plan_pool("tiny", TINY_SEED, 5, pool=sentences)
    # 20 sentences: the training splits share the 8 left, none is new.
    with pytest.raises(ValueError, match="leaves only 0 unused"):
        synthetic_corpus.plan_pool("tiny", TINY_SEED, 1, pool=sentences[:20])
    # Refused while planning: nothing is synthesised or written.
    with pytest.raises(ValueError, match="needs 5 new sentences"):
        synthetic_corpus.build_corpus(
            str(tmp_path / "out"), "tiny", pool=sentences, pool_size=5, progress=False
        )
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="pool_size must be >= 0, got -1"):
        synthetic_corpus.build_corpus(str(tmp_path / "out"), "tiny", pool_size=-1, progress=False)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pool", "-1"], "--pool must be >= 0, got -1"),
        (["--pool", "40000"], "A train-pool of 40000 utterances needs 40000 new sentences, but "
         "the text pool leaves only 34580 unused by the other splits of the 'tiny' corpus; use "
         "a larger --vocab_limit or a smaller --pool."),
    ],
)  # fmt: skip
def test_make_corpus_cli_refuses_a_bad_pool_in_one_line(
    tmp_path, monkeypatch, capsys, args, message
):
    import runpy
    import sys

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                        "make_corpus.py")  # fmt: skip
    monkeypatch.delenv("TFKD_TRACEBACK", raising=False)
    monkeypatch.setattr(sys, "argv", [path, "--size", "tiny", str(tmp_path / "c"), *args])
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(path, run_name="__main__")
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"tools/make_corpus.py: {message}\n"
    assert not (tmp_path / "c").exists()


def test_pool_and_respoken_compose_and_keep_the_other_splits_byte_identical(tiny_corpus, tmp_path):
    for split in synthetic_corpus.SPLITS:  # copy the fixture, then add both splits
        shutil.copytree(tiny_corpus / split, tmp_path / split)
    manifest = synthetic_corpus.build_corpus(
        str(tmp_path), "tiny", seed=TINY_SEED, jobs=1, progress=False, respoken=1, pool_size=4
    )
    assert list(manifest["splits"]) == [
        *synthetic_corpus.SPLITS, synthetic_corpus.RESPOKEN, synthetic_corpus.POOL,
    ]  # fmt: skip
    pool = manifest["splits"][synthetic_corpus.POOL]
    assert (pool["utterances"], pool["speakers"], pool["chapters"]) == (4, 1, 1)
    assert manifest["splits"][synthetic_corpus.RESPOKEN]["utterances"] == 16
    before = json.loads((tiny_corpus / "manifest.json").read_text())
    for split in synthetic_corpus.SPLITS:
        assert manifest["splits"][split] == before["splits"][split]
    for sid, entry in before["speakers"].items():
        assert manifest["speakers"][sid] == entry
    assert _transcripts(tmp_path) == _transcripts(tiny_corpus)
    audio = _audio(tmp_path)
    for key, samples in _audio(tiny_corpus).items():
        np.testing.assert_array_equal(audio[key], samples)
    assert sum(k.startswith(synthetic_corpus.POOL) for k in audio) == 4
    # SPEAKERS.txt and utterances.tsv: the old rows unchanged, the new splits' rows added.
    for name, pool_rows in (("SPEAKERS.txt", 1), ("utterances.tsv", 4)):
        old = (tiny_corpus / name).read_text().splitlines()
        new = (tmp_path / name).read_text().splitlines()
        assert [line for line in new if line in old] == old
        assert sum(synthetic_corpus.POOL in line for line in new) == pool_rows
        assert len(new) == len(old) + pool_rows + (4 if name == "SPEAKERS.txt" else 16)
    # The pool's transcripts are plan_pool's sentences.
    (trans,) = glob.glob(str(tmp_path / synthetic_corpus.POOL / "*" / "*" / "*.trans.txt"))
    texts = [line.split(" ", 1)[1] for line in open(trans).read().splitlines()]
    planned = synthetic_corpus.plan_pool("tiny", TINY_SEED, 4)
    assert texts == [t.upper() for t in _texts(planned)]
    # A call with --pool alone lists the pool but not train-respoken (the flags are repeated
    # to keep both; the audio on disk stays).
    alone = synthetic_corpus.build_corpus(
        str(tmp_path), "tiny", seed=TINY_SEED, jobs=1, progress=False, pool_size=4
    )
    assert list(alone["splits"]) == [*synthetic_corpus.SPLITS, synthetic_corpus.POOL]
    assert (tmp_path / synthetic_corpus.RESPOKEN).is_dir()


def _argv_tool(script, *args):
    return ["PY", script, *args]


def test_builtin_data_steps_add_a_pool_step_after_the_others():
    base = jobs_lib.builtin_data_steps(_argv_tool, "/d", "small", 64, respoken=2)
    steps = jobs_lib.builtin_data_steps(_argv_tool, "/d", "small", 64, respoken=2, pool=20000)
    assert steps[:-1] == base
    assert [name for name, _, _ in steps] == ["corpus", "spm", "records", "respoken", "pool"]
    name, commands, marks = steps[-1]
    prepare = ["PY", "tools/prepare_librispeech.py", "/d/corpus/small/train-pool", "/d/records",
               "--spm_model", "/d/spm/spm.model", "--jobs", "2"]  # fmt: skip
    assert commands == [
        ["PY", "tools/make_corpus.py", "--size", "small", "--jobs", "2", "--pool", "20000",
         "--respoken", "2", "/d/corpus/small"],
        prepare,
    ]  # fmt: skip
    assert marks == ("/d/records/train-pool.manifest.json",)
    # Without respoken: no respoken step, and the pool step does not ask for it.
    steps = jobs_lib.builtin_data_steps(_argv_tool, "/d", "tiny", 32, pool=8)
    assert [name for name, _, _ in steps] == ["corpus", "spm", "records", "pool"]
    make, prep = steps[-1][1]
    assert make == ["PY", "tools/make_corpus.py", "--size", "tiny", "--jobs", "2", "--pool", "8",
                    "/d/corpus/tiny"]  # fmt: skip
    assert prep[2] == "/d/corpus/tiny/train-pool"
    assert jobs_lib.builtin_data_steps(_argv_tool, "/d", "tiny", 32, pool=0) == steps[:-1]
