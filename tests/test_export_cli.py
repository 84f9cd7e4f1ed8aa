"""bin/export, bin/convert_tflite, tools/tflite_eval.py, tools/serving_request.py end to end.

A trainer-format model directory (checkpoint + operative_config.gin) of the tiny gin config is
restored by each command; their outputs must decode exactly like the in-process model.
"""

import json
import os
import subprocess
import sys
import wave

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkd import config, decoding
from tfkd.data import records
from tfkd.data.tokenizer import Tokenizer, train_sentencepiece
from tfkd.features import LogMel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["the dog sat on the mat", "a cat", "home is where the cat is", "the mat ran"]


def _run(args, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_cli")
    spm = train_sentencepiece(TEXTS * 5, str(tmp / "spm" / "sp"), 20)
    tokenizer = Tokenizer(spm)
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(str(tmp / "test-00000.tfrecord")) as writer:
        for i, text in enumerate(TEXTS):
            n = int(rng.integers(4000, 9000))
            pcm = (3000 * np.sin(np.arange(n) / (4.0 + i)) + rng.normal(0, 300, n)).astype(np.int16)
            utt = records.Utterance(
                utterance_id=f"test-{i}",
                speaker_id="1",
                text=text,
                pcm16=pcm,
                token_ids=tokenizer.encode(text),
            )
            writer.write(records.serialize_utterance(utt))
    bindings = [
        f"TRAIN_RECORDS = '{tmp}/test-*.tfrecord'",
        f"TEST_RECORDS = '{tmp}/test-*.tfrecord'",
        f"SPM_MODEL = '{spm}'",
        f"VOCAB_SIZE = {tokenizer.vocab_size}",
    ]
    run_dir = tmp / "run"
    run_dir.mkdir()
    try:
        text = config.parse_gin(["gin/test/tiny.gin"], bindings)
        keras.utils.set_random_seed(5)
        model = gin.query_parameter("train.model_fn").scoped_configurable_fn()
    finally:
        gin.clear_config()
    (run_dir / "operative_config.gin").write_text(text)
    model.build_by_calling(num_features=80)
    ckpt = tf.train.Checkpoint(model=model, step=tf.Variable(9, dtype=tf.int64))
    tf.train.CheckpointManager(ckpt, str(run_dir), 2, checkpoint_name="ckpt").save(9)
    frontend = LogMel()
    return {"tmp": tmp, "dir": str(run_dir), "model": model, "fe": frontend, "tok": tokenizer}


def _greedy(model, fe, samples):
    feats, lengths = fe(samples[None], tf.constant([len(samples)]))
    ids, n, _ = decoding.greedy_decode(model, feats, lengths)
    return ids.numpy()[0, : int(n[0])].tolist()


@pytest.mark.slow
def test_bin_export_and_serving_request(model_dir):
    tmp, out = model_dir["tmp"], str(model_dir["tmp"] / "export" / "3")
    printed = _run(["bin/export", f"--model_dir={model_dir['dir']}", f"--output={out}"], tmp)
    assert printed.strip().endswith("/export/3")
    assert (
        "train.model_fn = @lstm_student" in open(os.path.join(out, "operative_config.gin")).read()
    )

    # A WAV file -> REST body -> the signature, as TF Serving would call it.
    rng = np.random.default_rng(1)
    pcm = (3000 * np.sin(np.arange(6000) / 6.0) + rng.normal(0, 300, 6000)).astype(np.int16)
    path = str(tmp / "a.wav")
    with wave.open(path, "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(16000)
        f.writeframes(pcm.tobytes())
    body = json.loads(_run(["tools/serving_request.py", path], tmp))
    assert body["signature_name"] == "serving_default"
    assert body["inputs"]["waveform_length"] == [6000]
    samples = np.array(body["inputs"]["waveform"], np.float32)
    np.testing.assert_allclose(samples[0], pcm / 32768.0, atol=1e-6)
    serve = tf.saved_model.load(out).signatures[body["signature_name"]]
    result = serve(**{k: tf.constant(v) for k, v in body["inputs"].items()})
    want = _greedy(model_dir["model"], model_dir["fe"], samples[0])
    assert result["token_ids"].numpy()[0, : int(result["token_length"][0])].tolist() == want
    assert result["transcript"].numpy()[0].decode() == model_dir["tok"].decode(want)


@pytest.mark.slow
def test_bin_convert_tflite_and_tflite_eval(model_dir):
    tmp = model_dir["tmp"]
    out_dir = str(tmp / "tflite")
    printed = _run(
        [
            "bin/convert_tflite",
            f"--model_dir={model_dir['dir']}",
            f"--output_dir={out_dir}",
            "--quantization=float32",
            "--streaming_chunk_ms=160",
        ],
        tmp,
    )
    paths = printed.split()
    assert sorted(os.path.basename(p) for p in paths) == [
        "student_streaming_float32.json",
        "student_streaming_float32.tflite",
        "student_whole_float32.tflite",
    ]
    report = str(tmp / "eval.json")
    table = _run(
        [
            "tools/tflite_eval.py",
            f"--model_dir={model_dir['dir']}",
            f"--tflite={out_dir}/student_whole_float32.tflite",
            f"--tflite={out_dir}/student_streaming_float32.tflite",
            f"--output_json={report}",
        ],
        tmp,
    )
    assert "student_whole_float32.tflite" in table
    rows = json.load(open(report))
    assert [r["kind"] for r in rows] == ["whole", "streaming"]
    for row in rows:
        # Float models decode exactly like the Keras student.
        assert row["utterances"] == len(TEXTS)
        assert row["same_tokens_as_keras"] == 1.0 and row["wer_diff"] == 0.0
        assert 0 < row["rtf_1_thread"] < 1.0 and row["size_bytes"] > 10_000
