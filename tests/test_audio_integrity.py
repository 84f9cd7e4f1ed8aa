"""Issue 21's audio-integrity defects, one test each: corrupt FLACs never hang and are never
written as audio, and every skip is counted. Fixtures: sox-written FLACs plus byte surgery."""

import json
import logging
import os
import shutil
import signal as signals
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from audio_fixtures import flip_bits, garbage_frames, random_bytes, signal, write_flac

from tfkd import features
from tfkd.data import audio_io, librispeech, records, shard_writer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = "re-download or re-extract it"


def test_flipped_byte_fails_the_frame_crc(tmp_path):
    # Item 4: tensorflow-io decoded this with a 4,096-sample frame altered and no error.
    path = str(tmp_path / "flipped.flac")
    write_flac(path, signal(3, 28073))
    flip_bits(path, os.path.getsize(path) // 3)
    with pytest.raises(audio_io.CorruptAudioError) as e:
        audio_io.read_audio(path)
    assert str(e.value) == (
        f"{path}: corrupt or truncated FLAC (frame CRC mismatch; `flac -t` fails it too); {FIX}"
    )
    if shutil.which("flac"):
        assert subprocess.run(["flac", "-t", "-s", path], capture_output=True).returncode != 0


def test_garbage_frames_fail_at_once(tmp_path):
    # Item 6: header intact, frames random; tensorflow-io spun at 100 % CPU on this forever.
    path = str(tmp_path / "garbage.flac")
    write_flac(path, signal(4, 28073))
    garbage_frames(path)
    start = time.monotonic()
    with pytest.raises(audio_io.CorruptAudioError) as e:
        audio_io.read_audio(path, timeout_s=20)
    assert time.monotonic() - start < 5
    assert str(e.value) == (
        f"{path}: corrupt or truncated FLAC (frame CRC mismatch; `flac -t` fails it too); {FIX}"
    )


def test_a_decode_that_never_returns_is_killed_and_counted(tmp_path, monkeypatch):
    # Item 6, the time bound: a decoder child that hangs is killed after timeout_s.
    path = str(tmp_path / "ok.flac")
    write_flac(path, signal(5, 3000))
    hung = audio_io._DecoderProcess()
    children = []
    start_child = hung._start

    def start():
        start_child()
        children.append(hung._proc)

    real_child = audio_io._CHILD
    monkeypatch.setattr(hung, "_start", start)
    monkeypatch.setattr(audio_io, "_decoder", hung)
    monkeypatch.setattr(audio_io, "_CHILD", "import time; time.sleep(600)")
    began = time.monotonic()
    pcm, problem = shard_writer.load_audio(path, 16000, False, timeout_s=0.5)
    assert time.monotonic() - began < 5
    assert pcm is None and problem == {
        "kind": "corrupt_audio",
        "path": path,
        "message": f"{path}: decoding took longer than 0.5 s and was stopped (corrupt frames "
        f"make decoders loop); {FIX}; skipped",
    }
    assert children[0].returncode == -signals.SIGKILL
    monkeypatch.setattr(audio_io, "_CHILD", real_child)
    out, _ = audio_io.read_audio(path)  # the next file gets a fresh child
    np.testing.assert_array_equal(out, signal(5, 3000))
    assert len(children) == 2
    hung.close()


def test_random_bytes_wav_says_what_it_holds(tmp_path):
    # Item 16: this used to be reported as "not a FLAC stream".
    path = str(tmp_path / "noise.wav")
    random_bytes(path, 4000, seed=1)
    with pytest.raises(audio_io.CorruptAudioError) as e:
        audio_io.read_audio(path)
    head = np.random.default_rng(1).integers(0, 256, 8, dtype=np.uint8).tobytes().hex(" ")
    assert str(e.value) == (
        f"{path}: not a RIFF/WAVE file: it holds unrecognised bytes ({head} ...); {FIX}"
    )


@pytest.mark.parametrize(
    "data, what",
    [
        (b"", "an empty file"),
        (b"<html><body>404 Not Found</body></html>", "HTML/XML ('<html><body>404 Not Foun')"),
        (b"OggS\x00\x02" + bytes(40), "an Ogg stream (Vorbis/Opus/Ogg FLAC)"),
        (bytes(100), "only zero bytes"),
    ],
)
def test_describe_names_what_a_non_audio_file_is(tmp_path, data, what):
    assert audio_io.describe(data) == what
    with pytest.raises(audio_io.CorruptAudioError) as e:
        audio_io.decode(data, "x.flac")
    assert str(e.value) == f"x.flac: not a FLAC file ('fLaC' header): it holds {what}; {FIX}"


def test_flac_named_wav_is_decoded_by_its_content(tmp_path):
    write_flac(str(tmp_path / "a.flac"), signal(6, 2000))
    os.rename(tmp_path / "a.flac", tmp_path / "a.wav")
    pcm, rate = audio_io.read_audio(tmp_path / "a.wav")
    np.testing.assert_array_equal(pcm, signal(6, 2000))


def test_zero_width_transcript_counts_as_empty(tmp_path):
    # Item 8: U+200B is not whitespace to str.split, so this was a one-"word" transcript.
    assert librispeech.normalize_text("\u200b\u200b \u200b") == ""
    assert librispeech.normalize_text("HEL\u200bLO\ufeff  WORLD\u200d") == "hello world"
    root = tmp_path / "c"
    write_flac(str(root / "1" / "2" / "1-2-0000.flac"), signal(7, 2000))
    trans = root / "1" / "2" / "1-2.trans.txt"
    trans.write_text("1-2-0000 \u200b\u200b\u200b\n", encoding="utf-8")
    sources, problems = librispeech.scan(str(root))
    assert sources == []
    assert [(p.kind, p.message) for p in problems] == [
        (
            "empty_transcript",
            f"{trans}:1: empty transcript for 1-2-0000; skipped {root}/1/2/1-2-0000.flac",
        )
    ]


def test_audio_shorter_than_one_feature_window_is_skipped(tmp_path):
    # Item 10: a 1-sample file made a record whose training step died on "logit_lengths must
    # be >= 1" without naming it.
    assert shard_writer.min_samples(16000) == 400
    assert features.num_frames(399) == 0 and features.num_frames(400) == 1
    path = str(tmp_path / "one.flac")
    write_flac(path, np.array([1000], np.int16))
    assert shard_writer.load_audio(path, 16000, False) == (
        None,
        {
            "kind": "too_short",
            "path": path,
            "message": f"{path}: 1 samples (0.06 ms), shorter than one 25 ms feature window "
            "(400 samples at 16000 Hz), so no encoder frame; skipped",
        },
    )
    write_flac(path, signal(8, 400))
    pcm, problem = shard_writer.load_audio(path, 16000, False)
    assert problem is None and pcm.shape == (400,)


def test_worker_exits_when_its_parent_dies():
    # Item 15: the watcher wakes when the parent's end of the pipe closes (as on SIGKILL).
    read_end, write_end = os.pipe()
    done = threading.Event()
    shard_writer.exit_with_parent(sentinel=read_end, on_exit=done.set)
    assert not done.wait(0.3)
    os.close(write_end)
    assert done.wait(5)
    os.close(read_end)


def make_corrupt_tree(root: str) -> dict:
    """One good utterance and one of each corrupt case; returns {utterance id: what it is}."""
    d = os.path.join(root, "7", "11")
    cases = {
        "7-11-0000": "good",
        "7-11-0001": "flipped",
        "7-11-0002": "garbage",
        "7-11-0003": "noise_wav",
        "7-11-0004": "one_sample",
        "7-11-0005": "zero_width",
    }
    for uid, case in cases.items():
        path = os.path.join(d, f"{uid}.flac")
        if case == "noise_wav":
            random_bytes(os.path.join(d, f"{uid}.wav"), 4000, seed=1)
        elif case == "one_sample":
            write_flac(path, np.array([1000], np.int16))
        else:
            write_flac(path, signal(9, 28073))
        if case == "flipped":
            flip_bits(path, os.path.getsize(path) // 3)
        elif case == "garbage":
            garbage_frames(path)
    with open(os.path.join(d, "7-11.trans.txt"), "w", encoding="utf-8") as f:
        for uid, case in cases.items():
            text = "\u200b\u200b" if case == "zero_width" else "SOME WORDS"
            f.write(f"{uid} {text}\n")
    return cases


EXPECTED_PROBLEMS = {
    **{k: 0 for k in librispeech.PROBLEM_KINDS},
    "corrupt_audio": 3,
    "too_short": 1,
    "empty_transcript": 1,
}


def _only_the_good_record(out: str) -> None:
    files = tf.io.gfile.glob(librispeech.shard_pattern(out, "bad"))
    ids = [
        ex["utterance_id"].numpy().decode()
        for ex in tf.data.TFRecordDataset(files).map(records.parse_example)
    ]
    assert ids == ["7-11-0000"]
    assert not [n for n in os.listdir(out) if ".tmp" in n]


def test_prepare_counts_every_corrupt_input(tmp_path, caplog):
    root = str(tmp_path / "bad")
    make_corrupt_tree(root)
    out = str(tmp_path / "rec")
    with caplog.at_level(logging.INFO, logger="tfkd.data.librispeech"):
        m = librispeech.prepare(root, out, progress=False)
    assert m["problems"] == EXPECTED_PROBLEMS and m["num_utterances"] == 1
    assert "5 inputs skipped (3 corrupt_audio, 1 too_short, 1 empty_transcript)" in caplog.text
    messages = "\n".join(m["problem_messages"])
    assert "7-11-0001.flac: corrupt or truncated FLAC (frame CRC mismatch" in messages
    assert "7-11-0002.flac: corrupt or truncated FLAC (" in messages
    assert "7-11-0003.wav: not a RIFF/WAVE file: it holds unrecognised bytes" in messages
    assert "7-11-0004.flac: 1 samples (0.06 ms), shorter than one 25 ms" in messages
    assert "empty transcript for 7-11-0005" in messages
    _only_the_good_record(out)


def test_prepare_cli_expected_failures_are_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "tools/prepare_librispeech.py", str(tmp_path / "nope"), str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"prepare_librispeech.py: error: {tmp_path / 'nope'}: not a directory; give the root of "
        "a LibriSpeech-layout tree (e.g. LibriSpeech/dev-clean)"
    )
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_prepare_cli_on_a_corrupt_tree_finishes_in_time(tmp_path):
    root = str(tmp_path / "bad")
    make_corrupt_tree(root)
    out = str(tmp_path / "rec")
    cmd = [sys.executable, "tools/prepare_librispeech.py", root, out, "--jobs", "2"]
    r = subprocess.run(
        [*cmd, "--num_shards", "2", "--no_progress", "--decode_timeout", "10"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,  # a hang fails here instead of stalling the suite
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert r.returncode == 0, r.stderr
    with open(librispeech.manifest_path(out, "bad")) as f:
        m = json.load(f)
    assert m["problems"] == EXPECTED_PROBLEMS and m["num_utterances"] == 1
    assert "5 inputs skipped (3 corrupt_audio, 1 too_short, 1 empty_transcript)" in r.stderr
    _only_the_good_record(out)


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in os.listdir(f"/proc/{p}/task") if os.path.isdir(f"/proc/{p}/task") else []:
            try:
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found.update(kids)
            todo.extend(kids)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_workers_die_with_a_killed_parent(tmp_path):
    # Item 15: after kill -9 of the parent, workers kept writing shards for ~8 s.
    root = os.path.join(str(tmp_path), "big")
    d = os.path.join(root, "3", "5")
    write_flac(os.path.join(d, "3-5-0000.flac"), signal(10, 16000))
    lines = ["3-5-0000 ONE TWO"]
    for i in range(1, 3000):
        os.link(os.path.join(d, "3-5-0000.flac"), os.path.join(d, f"3-5-{i:04d}.flac"))
        lines.append(f"3-5-{i:04d} ONE TWO")
    with open(os.path.join(d, "3-5.trans.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    out = str(tmp_path / "rec")
    parent = subprocess.Popen(
        [sys.executable, "tools/prepare_librispeech.py", root, out, "--jobs", "2"]
        + ["--num_shards", "2", "--no_progress"],
        cwd=REPO,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not (os.path.isdir(out) and [n for n in os.listdir(out) if ".tmp-" in n]):
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        children = _descendants(parent.pid)
        assert len(children) >= 2
        parent.send_signal(signals.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 3
        while any(_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in children if _alive(p)]
        assert not [n for n in os.listdir(out) if n.endswith(".tfrecord")]
    finally:
        parent.kill()
        for p in children:
            if _alive(p):  # only the processes this test started
                os.kill(p, signals.SIGKILL)
