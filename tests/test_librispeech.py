import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from audio_fixtures import signal, truncate, write_flac, write_wav
from tool_scripts import load_tool

from tfkd.data import librispeech, records, tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# utterance id -> (transcript as in LibriSpeech, number of samples); all at 16 kHz.
GOOD = {
    "19-198-0000": ("THE QUICK BROWN FOX", 4000),
    "19-198-0001": ("JUMPS OVER THE LAZY DOG", 5200),
    "19-198-0002": ("AND GOD SAID LET THERE BE LIGHT", 3100),
    "19-198-0003": ("A BIG CAT SAT ON THE MAT", 2500),
    "26-495-0000": ("IN THE BEGINNING WAS THE WORD", 6000),
    "26-495-0001": ("SHE'S SELLING SEA SHELLS", 3700),
}


def _seed(uid):
    return int(uid.replace("-", "")) % 1000


def make_corpus(root, bad=True):
    """Writes a LibriSpeech-layout tree: six good utterances plus one of each bad case."""
    lines = {"19-198": [], "26-495": []}
    for uid, (text, n) in GOOD.items():
        spk, chap, _ = uid.split("-")
        write_flac(os.path.join(root, spk, chap, f"{uid}.flac"), signal(_seed(uid), n))
        lines[f"{spk}-{chap}"].append(f"{uid} {text}")
    if bad:
        d = os.path.join(root, "26", "495")
        write_flac(os.path.join(d, "26-495-0002.flac"), signal(2, 20000))
        truncate(os.path.join(d, "26-495-0002.flac"), 0.6)
        with open(os.path.join(d, "26-495-0003.flac"), "wb") as f:
            f.write(b"\x00garbage" * 100)
        write_flac(os.path.join(d, "26-495-0005.flac"), signal(5, 3000))  # no transcript line
        write_flac(os.path.join(d, "26-495-0006.flac"), signal(6, 3000))
        write_flac(os.path.join(d, "26-495-0007.flac"), signal(7, 22050, 22050), rate=22050)
        stereo = np.stack([signal(8, 3000), signal(9, 3000)], axis=1)
        write_flac(os.path.join(d, "26-495-0008.flac"), stereo)
        # A second file for an id that already has one.
        write_wav(os.path.join(root, "19", "198", "19-198-0000.wav"), signal(1, 100))
        lines["26-495"] += [
            "26-495-0002 TRUNCATED AUDIO",
            "26-495-0003 CORRUPT AUDIO",
            "26-495-0004 THIS LINE HAS NO AUDIO",
            "26-495-0006",
            "26-495-0007 THE WRONG RATE",
            "26-495-0008 TWO CHANNELS",
        ]
    for key, ls in lines.items():
        spk, chap = key.split("-")
        with open(os.path.join(root, spk, chap, f"{key}.trans.txt"), "w") as f:
            f.write("\n".join(ls) + "\n")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ls") / "dev-tiny")
    make_corpus(root)
    return root


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    # Trained without the apostrophe, so "she's" is the only out-of-vocabulary word.
    texts = [t.lower() for t, _ in GOOD.values() if "'" not in t] * 5
    prefix = str(tmp_path_factory.mktemp("spm") / "spm")
    return tokenizer.train_sentencepiece(texts, prefix, vocab_size=40)


def read_records(output_dir, split):
    files = sorted(tf.io.gfile.glob(librispeech.shard_pattern(output_dir, split)))
    out = {}
    for ex in tf.data.TFRecordDataset(files).map(records.parse_example):
        out[ex["utterance_id"].numpy().decode()] = ex
    return out


def test_scan_pairs_files_and_reports_problems_without_decoding(corpus):
    sources, problems = librispeech.scan(corpus)
    ids = [s.utterance_id for s in sources]
    assert ids == sorted([*GOOD, "26-495-0002", "26-495-0003", "26-495-0007", "26-495-0008"])
    src = sources[ids.index("26-495-0001")]
    assert src.text == "she's selling sea shells" and src.speaker_id == "26"
    assert src.audio_path == os.path.join(corpus, "26", "495", "26-495-0001.flac")
    by_kind = {p.kind: p.message for p in problems}
    assert len(problems) == 4
    assert sorted(by_kind) == [
        "duplicate_utterance",
        "empty_transcript",
        "missing_audio",
        "missing_transcript",
    ]
    assert by_kind["duplicate_utterance"] == (
        f"{corpus}/19/198/19-198-0000.wav: second audio file for 19-198-0000 "
        f"(first {corpus}/19/198/19-198-0000.flac); kept the first"
    )
    assert (
        "26-495.trans.txt:5: transcript line for 26-495-0004 has no audio"
        in (by_kind["missing_audio"])
    )
    assert by_kind["missing_transcript"].startswith(
        os.path.join(corpus, "26", "495", "26-495-0005.flac") + ": no transcript line"
    )
    assert "26-495.trans.txt:6: empty transcript for 26-495-0006" in by_kind["empty_transcript"]


def test_round_trip_bad_inputs_and_manifest(corpus, spm_model, tmp_path, capsys):
    out = str(tmp_path / "rec")
    manifest = librispeech.prepare(corpus, out, spm_model=spm_model, num_shards=2, progress=False)
    err = capsys.readouterr().err

    assert manifest["split"] == "dev-tiny"
    assert manifest["shards"] == [
        "dev-tiny-00000-of-00002.tfrecord",
        "dev-tiny-00001-of-00002.tfrecord",
    ]
    assert manifest["problems"] == {
        "corrupt_audio": 2,
        "unsupported_audio": 1,
        "wrong_sample_rate": 1,
        "too_short": 0,
        "missing_audio": 1,
        "missing_transcript": 1,
        "empty_transcript": 1,
        "duplicate_utterance": 1,
    }
    # Each bad input is named on stderr and in the manifest.
    for name, words in [
        ("26-495-0002.flac", "corrupt or truncated"),
        ("26-495-0003.flac", "not a FLAC file ('fLaC' header): it holds unrecognised bytes"),
        ("26-495-0007.flac", "22050 Hz, expected 16000 Hz"),
        ("26-495-0005.flac", "no transcript line"),
        ("26-495-0004", "has no audio"),
        ("26-495-0006", "empty transcript"),
        ("26-495-0008.flac", "2 channels; tfkd expects mono"),
        ("19-198-0000.wav", "second audio file"),
    ]:
        assert any(name in m and words in m for m in manifest["problem_messages"]), name
        assert any(name in line and words in line for line in err.splitlines()), name

    recs = read_records(out, "dev-tiny")
    assert sorted(recs) == sorted(GOOD)  # nothing broken or skipped was written
    tok = tokenizer.Tokenizer(spm_model)
    for uid, (text, n) in GOOD.items():
        ex = recs[uid]
        pcm = np.round(ex["waveform"].numpy() * 32768.0).astype(np.int16)
        np.testing.assert_array_equal(pcm, signal(_seed(uid), n))
        assert int(ex["num_samples"]) == n and int(ex["sample_rate"]) == 16000
        assert ex["text"].numpy().decode() == text.lower()
        assert ex["speaker_id"].numpy().decode() == uid.split("-")[0]
        assert ex["token_ids"].numpy().tolist() == tok.encode(text.lower())
        assert abs(float(ex["duration"]) - n / 16000) < 1e-6

    total = sum(n for _, n in GOOD.values())
    assert manifest["num_utterances"] == 6 and manifest["num_speakers"] == 2
    assert manifest["hours"] == pytest.approx(total / 16000 / 3600)
    assert manifest["min_seconds"] == pytest.approx(2500 / 16000)
    assert manifest["max_seconds"] == pytest.approx(6000 / 16000)
    vocab = manifest["vocabulary"]
    assert vocab["num_words"] == 33 and vocab["num_word_types"] == 29
    # "she's" needs <unk> (no apostrophe in training): 1 of 33 running words, 1 of 29 types.
    assert vocab["word_oov_rate"] == pytest.approx(1 / 33)
    assert vocab["word_coverage"] == pytest.approx(32 / 33)
    assert vocab["word_type_oov_rate"] == pytest.approx(1 / 29)
    assert vocab["vocab_size"] == tok.vocab_size
    assert vocab["num_tokens"] == sum(len(tok.encode(t.lower())) for t, _ in GOOD.values())
    assert vocab["unk_token_rate"] == pytest.approx(1 / vocab["num_tokens"])
    assert 0 < vocab["piece_coverage"] <= 1
    with open(librispeech.manifest_path(out, "dev-tiny")) as f:
        assert json.load(f) == manifest


def test_resample_flag_keeps_the_22khz_file(corpus, tmp_path):
    m = librispeech.prepare(corpus, str(tmp_path), split="r", resample=True, progress=False)
    assert m["problems"]["wrong_sample_rate"] == 0 and m["num_utterances"] == 7
    ex = read_records(str(tmp_path), "r")["26-495-0007"]
    assert int(ex["sample_rate"]) == 16000 and abs(int(ex["num_samples"]) - 16000) <= 1
    assert m["vocabulary"] == {"num_words": 36, "num_word_types": 31}


def test_resume_skips_finished_shards_and_rewrites_damaged_ones(tmp_path, capsys):
    corpus = str(tmp_path / "c")
    make_corpus(corpus, bad=False)
    out = str(tmp_path / "rec")
    first = librispeech.prepare(corpus, out, split="s", num_shards=3, progress=False)
    assert first["shards_skipped"] == []
    shards = [os.path.join(out, n) for n in first["shards"]]
    mtimes = [os.stat(p).st_mtime_ns for p in shards]
    capsys.readouterr()

    again = librispeech.prepare(corpus, out, split="s", num_shards=3, progress=False)
    assert again["shards_skipped"] == first["shards"]
    assert [os.stat(p).st_mtime_ns for p in shards] == mtimes
    assert {k: v for k, v in again.items() if k != "shards_skipped"} == {
        k: v for k, v in first.items() if k != "shards_skipped"
    }

    # A truncated shard, a shard whose finish mark is missing (crash between the two renames)
    # and a temp file of an interrupted run.
    truncate(shards[1], 0.5)
    os.remove(shards[2][: -len(".tfrecord")] + ".stats.json")
    open(shards[0] + ".tmp-999", "wb").close()
    capsys.readouterr()
    third = librispeech.prepare(corpus, out, split="s", num_shards=3, progress=False)
    err = capsys.readouterr().err
    assert third["shards_skipped"] == first["shards"][:1]
    assert "s-00001-of-00003.tfrecord: rewritten because it has" in err
    assert not os.path.exists(shards[0] + ".tmp-999")
    recs = read_records(out, "s")
    assert sorted(recs) == sorted(GOOD)
    for uid, (_, n) in GOOD.items():
        pcm = np.round(recs[uid]["waveform"].numpy() * 32768.0).astype(np.int16)
        np.testing.assert_array_equal(pcm, signal(_seed(uid), n))

    # A corrupted byte in the middle keeps the size, so only reading back can catch it.
    with open(shards[0], "r+b") as f:
        f.seek(os.path.getsize(shards[0]) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    fourth = librispeech.prepare(corpus, out, split="s", num_shards=3, progress=False)
    assert fourth["shards_skipped"] == first["shards"][1:]
    assert len(read_records(out, "s")) == 6

    # Another shard count replaces the old shards instead of leaving them for a glob to find.
    fifth = librispeech.prepare(corpus, out, split="s", shard_size=4, progress=False)
    assert fifth["shards"] == ["s-00000-of-00002.tfrecord", "s-00001-of-00002.tfrecord"]
    assert sorted(os.listdir(out)) == sorted(
        fifth["shards"]
        + [n.replace(".tfrecord", ".stats.json") for n in fifth["shards"]]
        + ["s.manifest.json"]
    )


def test_changed_tokenizer_rewrites_shards(tmp_path, spm_model):
    corpus = str(tmp_path / "c")
    make_corpus(corpus, bad=False)
    out = str(tmp_path / "rec")
    librispeech.prepare(corpus, out, split="s", num_shards=1, progress=False)
    m = librispeech.prepare(
        corpus, out, split="s", num_shards=1, spm_model=spm_model, progress=False
    )
    assert m["shards_skipped"] == []
    assert read_records(out, "s")["19-198-0000"]["token_ids"].numpy().size > 0


def test_moved_corpus_keeps_shards_and_edited_transcript_rewrites_one(tmp_path):
    corpus = str(tmp_path / "c")
    make_corpus(corpus, bad=False)
    out = str(tmp_path / "rec")
    first = librispeech.prepare(corpus, out, split="s", num_shards=2, progress=False)
    os.rename(corpus, str(tmp_path / "moved"))
    corpus = str(tmp_path / "moved")
    m = librispeech.prepare(corpus, out, split="s", num_shards=2, progress=False)
    assert m["shards_skipped"] == first["shards"]
    # Round-robin puts the 4th utterance in sorted order (19-198-0003) in shard 1.
    trans = os.path.join(corpus, "19", "198", "19-198.trans.txt")
    with open(trans) as f:
        text = f.read().replace("A BIG CAT SAT ON THE MAT", "A BIG DOG SAT ON THE MAT")
    with open(trans, "w") as f:
        f.write(text)
    m = librispeech.prepare(corpus, out, split="s", num_shards=2, progress=False)
    assert m["shards_skipped"] == first["shards"][:1]
    assert read_records(out, "s")["19-198-0003"]["text"].numpy() == b"a big dog sat on the mat"


def test_bad_arguments(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        librispeech.prepare(str(tmp_path / "nope"), str(tmp_path / "o"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="LibriSpeech layout"):
        librispeech.prepare(str(tmp_path / "empty"), str(tmp_path / "o"))
    with pytest.raises(ValueError, match="not both"):
        librispeech.prepare(corpus, str(tmp_path / "o"), num_shards=2, shard_size=3)


def _run_tool(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )


def test_train_spm_cli_on_librispeech_layout(corpus, tmp_path, capsys):
    prefix = str(tmp_path / "m" / "spm")
    tool = load_tool("train_spm")
    assert tool.main([corpus, "--vocab_size", "30", "--output_prefix", prefix]) == 0
    tok = tokenizer.Tokenizer(str(tmp_path / "m" / "spm.model"))
    assert tok.pieces[0] == "<blank>" and tok.vocab_size <= 30
    # Lower-cased like the records; the empty transcript line is not a sentence.
    assert tok.decode(tok.encode("the wrong rate")) == "the wrong rate"
    assert f"{tok.vocab_size} ids (0 = blank) from 11 sentences" in capsys.readouterr().out
    # What it was trained on, for the study's data check (tfkd.study.jobs.check_spm).
    with open(prefix + ".json") as f:
        manifest = json.load(f)
    assert manifest == {
        "input": os.path.abspath(corpus),
        "sentences": 11,
        "vocab_size": 30,
        "model_type": "unigram",
        "character_coverage": 1.0,
        "pieces": tok.vocab_size,
        "model_sha256": tokenizer.file_sha256(prefix + ".model"),
    }


def test_prepare_cli_in_process(corpus, tmp_path, capsys):
    out = str(tmp_path / "rec")
    tool = load_tool("prepare_librispeech")
    assert tool.main([corpus, out, "--shard_size", "4", "--no_progress"]) == 0
    with open(os.path.join(out, "dev-tiny.manifest.json")) as f:
        m = json.load(f)
    assert m["num_utterances"] == 6 and len(m["shards"]) == 3  # 10 candidates / 4 per shard
    assert "26-495-0007.flac: 22050 Hz" in capsys.readouterr().err
    assert tool.main([corpus, out, "--num_shards", "3", "--no_progress", "--no_verify"]) == 0
    assert "3 already done" in capsys.readouterr().err


@pytest.mark.slow
def test_prepare_cli_with_two_jobs(corpus, tmp_path, spm_model):
    out = str(tmp_path / "rec")
    args = [
        "tools/prepare_librispeech.py",
        corpus,
        out,
        "--num_shards",
        "3",
        "--jobs",
        "2",
        "--spm_model",
        spm_model,
        "--split",
        "dev",
    ]
    r = _run_tool(*args)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(out, "dev.manifest.json")) as f:
        m = json.load(f)
    assert m["num_utterances"] == 6 and m["problems"]["corrupt_audio"] == 2
    assert "26-495-0003.flac: not a FLAC file" in r.stderr
    assert sorted(read_records(out, "dev")) == sorted(GOOD)
    r = _run_tool(*args)
    assert r.returncode == 0 and r.stderr.count("finished earlier and intact; skipped") == 3
