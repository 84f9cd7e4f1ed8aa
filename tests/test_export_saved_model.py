"""SavedModel export: signatures, a tfkd-free consumer, padding invariance, input validation."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tiny_students import tiny_lstm_student

from tfkd import decoding
from tfkd.data.tokenizer import Tokenizer, train_sentencepiece
from tfkd.export import saved_model
from tfkd.features import LogMel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = (7000, 3100, 12345)
SENTENCES = ["the cat sat on the mat", "a dog ran home", "home is where the cat is"] * 5


def tiny_student(vocab_size, seed=3):
    return tiny_lstm_student(vocab_size, seed)


def utterances(seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(max(LENGTHS)) / 16000.0
    out = []
    for i, n in enumerate(LENGTHS):
        tone = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t[:n])
        out.append((tone + 0.05 * rng.normal(size=n)).astype(np.float32))
    return out


def padded(waves, width=None):
    width = width or max(len(w) for w in waves)
    batch = np.zeros([len(waves), width], np.float32)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    return batch, np.array([len(w) for w in waves], np.int32)


# Runs in a fresh interpreter that never imports tfkd: what a serving client sees.
_CONSUMER = r"""
import json, sys
import numpy as np, tensorflow as tf
assert not any(m.startswith("tfkd") for m in sys.modules)
path, data = sys.argv[1], np.load(sys.argv[2])
loaded = tf.saved_model.load(path)
serve = loaded.signatures["serving_default"]
out = {"tfkd_imported": any(m.startswith("tfkd") for m in sys.modules)}

def run(fn, **kw):
    try:
        res = fn(**{k: tf.constant(v) for k, v in kw.items()})
        return {k: v.numpy().tolist() for k, v in res.items()}
    except tf.errors.InvalidArgumentError as e:
        return {"error": e.message}

def text(res):
    return [t.decode() if isinstance(t, bytes) else t for t in res["transcript"]]

wave, lengths = data["wave"], data["lengths"]
res = run(serve, waveform=wave, waveform_length=lengths)
out["batch"] = {"transcript": text(res), "token_ids": res["token_ids"],
                "token_length": res["token_length"], "score": res["score"]}
# Extra padding and each utterance alone.
wide = np.pad(wave, [[0, 0], [0, 4000]], constant_values=0.7)
out["wide"] = text(run(serve, waveform=wide, waveform_length=lengths))
out["alone"] = [text(run(serve, waveform=wave[i:i + 1, :n], waveform_length=lengths[i:i + 1]))[0]
                for i, n in enumerate(lengths)]
bad = wave.copy(); bad[1, 5] = np.nan
out["nan"] = run(serve, waveform=bad, waveform_length=lengths)
bad_pad = wave.copy(); bad_pad[1, lengths[1] + 3] = np.nan
out["nan_in_padding"] = text(run(serve, waveform=bad_pad, waveform_length=lengths))
out["too_long_length"] = run(serve, waveform=wave, waveform_length=lengths + wave.shape[1])
out["negative"] = run(serve, waveform=wave, waveform_length=-lengths)
out["batch_mismatch"] = run(serve, waveform=wave, waveform_length=lengths[:2])
long = np.zeros([1, 16000 * 3], np.float32)
out["over_max"] = run(serve, waveform=long, waveform_length=np.array([long.shape[1]], np.int32))
out["empty"] = run(serve, waveform=np.zeros([2, 0], np.float32),
                   waveform_length=np.zeros([2], np.int32))
out["short"] = run(serve, waveform=wave[:, :300], waveform_length=np.array([300, 0, 120], np.int32))
nb = run(loaded.signatures["transcribe_nbest"], waveform=wave, waveform_length=lengths)
out["nbest"] = {k: v for k, v in nb.items() if k != "transcripts"}
out["nbest_text"] = [[t.decode() for t in row] for row in nb["transcripts"]]
sc = loaded.signatures["score_hypotheses"]
out["scores"] = run(sc, waveform=wave, waveform_length=lengths, token_ids=data["hyps"],
                    token_lengths=data["hyp_lengths"])
bad_ids = data["hyps"].copy(); bad_ids[0, 0, 0] = 0
out["blank_in_hyp"] = run(sc, waveform=wave, waveform_length=lengths, token_ids=bad_ids,
                          token_lengths=data["hyp_lengths"])
out["hyp_shape_mismatch"] = run(sc, waveform=wave, waveform_length=lengths, token_ids=data["hyps"],
                                token_lengths=data["hyp_lengths"][:, :1])
# Wrong ranks: a loaded signature does not check them; the graph must, before anything else.
import time
one = wave[0, : lengths[0]]
for name, fn, kw in (
    ("rank_1d", serve, dict(waveform=one, waveform_length=lengths[:1])),
    ("rank_3d", serve, dict(waveform=one[None, :, None], waveform_length=lengths[:1])),
    ("scalar_length", serve, dict(waveform=one[None], waveform_length=lengths[0])),
    ("nbest_rank_1d", loaded.signatures["transcribe_nbest"],
     dict(waveform=one, waveform_length=lengths[:1])),
    ("hyps_rank_2", sc, dict(waveform=wave, waveform_length=lengths, token_ids=data["hyps"][:, 0],
                             token_lengths=data["hyp_lengths"])),
):
    start = time.time()
    out[name] = run(fn, **kw)
    out[name]["seconds"] = time.time() - start
print(json.dumps(out, default=lambda b: b.decode()))
"""


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("saved_model")
    tokenizer = Tokenizer(train_sentencepiece(SENTENCES, str(tmp / "spm" / "sp"), 20))
    model = tiny_student(tokenizer.vocab_size)
    frontend = LogMel()
    frontend(tf.zeros([1, 800]))
    module = saved_model.ServingModule(
        model,
        frontend,
        tokenizer.ids_to_text_layer(),
        max_duration_s=2.0,
        beam_width=3,
        nbest=2,
    )
    path = saved_model.export_saved_model(
        module, str(tmp / "export" / "1"), gin_config="train.num_steps = 1\n"
    )
    return {"path": path, "model": model, "frontend": frontend, "tokenizer": tokenizer, "tmp": tmp}


@pytest.fixture(scope="module")
def consumer(export):
    wave, lengths = padded(utterances())
    hyps = np.array(
        [
            [[3, 4, 5, 0], [6, 0, 0, 0]],
            [[7, 8, 9, 10], [2, 2, 0, 0]],
            [[11, 0, 0, 0], [3, 3, 3, 0]],
        ],
        np.int32,
    )
    hyp_lengths = np.array([[3, 1], [4, 2], [1, 0]], np.int32)
    data = str(export["tmp"] / "inputs.npz")
    np.savez(data, wave=wave, lengths=lengths, hyps=hyps, hyp_lengths=hyp_lengths)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}
    script = export["tmp"] / "consumer.py"
    script.write_text(_CONSUMER)
    # cwd outside the repository, so tfkd cannot even be found by accident.
    proc = subprocess.run(
        [sys.executable, str(script), export["path"], data],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(export["tmp"]),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"out": out, "wave": wave, "lengths": lengths, "hyps": hyps, "hyp_lengths": hyp_lengths}


def test_layout_readme_and_gin_config(export):
    path = export["path"]
    assert os.path.basename(path) == "1"
    names = set(os.listdir(path))
    assert {"saved_model.pb", "variables", "README.md", "operative_config.gin"} <= names
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".tmp")]
    graph = open(os.path.join(path, "saved_model.pb"), "rb").read()
    # TF Serving runs neither Python callbacks nor (by default) XLA-compiled functions.
    assert b"PyFunc" not in graph and b"_XlaMustCompile" not in graph
    readme = open(os.path.join(path, "README.md")).read()
    for name in saved_model.SIGNATURES:
        assert f"`{name}(" in readme
    with pytest.raises(FileExistsError):
        saved_model.export_saved_model(None, path)
    with pytest.raises(ValueError, match="version"):
        saved_model.export_saved_model(None, str(export["tmp"] / "export" / "latest"))


def test_saved_model_cli_lists_signatures(export):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run(
        [cli, "show", "--dir", export["path"], "--all"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    blocks = dict(
        (b.split("'")[0], b) for b in text.split("signature_def['")[1:]
    )  # name -> its block of text
    assert set(saved_model.SIGNATURES) <= set(blocks)

    def has(block, kind, name, dtype, shape):
        # saved_model_cli prints "inputs['x'] tensor_info:\n dtype: DT_FLOAT\n shape: (-1, -1)".
        part = block.split(f"{kind}['{name}'] tensor_info:")[1].split("name:")[0]
        return f"dtype: {dtype}" in part and f"shape: {shape}" in part

    serve = blocks["serving_default"]
    assert has(serve, "inputs", "waveform", "DT_FLOAT", "(-1, -1)")
    assert has(serve, "inputs", "waveform_length", "DT_INT32", "(-1)")
    assert has(serve, "outputs", "transcript", "DT_STRING", "(-1)")
    assert has(serve, "outputs", "token_ids", "DT_INT32", "(-1, -1)")
    assert has(serve, "outputs", "score", "DT_FLOAT", "(-1)")
    nbest = blocks["transcribe_nbest"]
    assert has(nbest, "outputs", "transcripts", "DT_STRING", "(-1, 2)")
    assert has(nbest, "outputs", "scores", "DT_FLOAT", "(-1, 2)")
    score = blocks["score_hypotheses"]
    assert has(score, "inputs", "token_ids", "DT_INT32", "(-1, -1, -1)")
    assert has(score, "inputs", "token_lengths", "DT_INT32", "(-1, -1)")
    assert has(score, "outputs", "scores", "DT_FLOAT", "(-1, -1)")


def test_fresh_process_transcripts_equal_tfkd_decoding(export, consumer):
    out, tok = consumer["out"], export["tokenizer"]
    assert not out["tfkd_imported"]
    expected_ids, expected_text, expected_scores = [], [], []
    for wave in utterances():
        feats, lengths = export["frontend"](wave[None], tf.constant([len(wave)]))
        ids, n, score = decoding.greedy_decode(export["model"], feats, lengths)
        expected_ids.append(ids.numpy()[0, : int(n[0])].tolist())
        expected_text.append(tok.decode(expected_ids[-1]))
        expected_scores.append(float(score[0]))
    batch = out["batch"]
    got_ids = [row[:n] for row, n in zip(batch["token_ids"], batch["token_length"], strict=True)]
    assert got_ids == expected_ids
    assert all(len(ids) > 0 for ids in expected_ids)  # the comparison is not vacuous
    assert batch["transcript"] == expected_text
    np.testing.assert_allclose(batch["score"], expected_scores, rtol=1e-4, atol=1e-3)
    assert out["wide"] == expected_text
    assert out["alone"] == expected_text
    assert out["nan_in_padding"] == expected_text


def test_invalid_inputs_give_clear_errors(consumer):
    out = consumer["out"]
    assert "NaN or Inf" in out["nan"]["error"]
    assert "exceeds the number of samples" in out["too_long_length"]["error"]
    assert ">= 0" in out["negative"]["error"]
    assert "one entry per waveform row" in out["batch_mismatch"]["error"]
    assert "maximum of 32000 samples (2 s)" in out["over_max"]["error"]
    assert "[1, " in out["blank_in_hyp"]["error"]
    assert "token_lengths must be [B, N]" in out["hyp_shape_mismatch"]["error"]


def test_wrong_ranks_fail_at_once_naming_the_expected_shape(consumer):
    out = consumer["out"]
    for name in ("rank_1d", "rank_3d", "nbest_rank_1d"):
        assert "waveform must be float32 [B, N] (rank 2" in out[name]["error"], name
    assert "waveform_length must be int32 [B] (rank 1" in out["scalar_length"]["error"]
    assert "not a scalar" in out["scalar_length"]["error"]
    assert "token_ids must be int32 [B, N, U] (rank 3" in out["hyps_rank_2"]["error"]
    for name in ("rank_1d", "rank_3d", "scalar_length", "nbest_rank_1d", "hyps_rank_2"):
        assert out[name]["seconds"] < 5.0, (name, out[name]["seconds"])  # was 9-13 s for one


def test_empty_and_sub_window_audio_give_empty_transcripts(consumer):
    out = consumer["out"]
    assert out["empty"]["transcript"] == ["", ""] and out["empty"]["score"] == [0.0, 0.0]
    assert out["short"]["transcript"] == ["", "", ""]
    assert out["short"]["token_length"] == [0, 0, 0]


def test_nbest_and_full_sum_scores_equal_tfkd(export, consumer):
    out, model = consumer["out"], export["model"]
    feats, lengths = export["frontend"](consumer["wave"], consumer["lengths"])
    found = decoding.beam_search(model, feats, lengths, beam_width=3, nbest=2)
    nb = out["nbest"]
    np.testing.assert_array_equal(nb["token_lengths"], found.lengths.numpy())
    for b in range(3):
        for k in range(2):
            n = found.lengths.numpy()[b, k]
            assert nb["token_ids"][b][k][:n] == found.token_ids.numpy()[b, k, :n].tolist()
    np.testing.assert_allclose(nb["scores"], found.scores.numpy(), rtol=1e-4, atol=1e-3)
    assert out["nbest_text"][0][0] == export["tokenizer"].decode(
        found.token_ids.numpy()[0, 0, : found.lengths.numpy()[0, 0]]
    )
    want = decoding.score(model, feats, lengths, consumer["hyps"], consumer["hyp_lengths"])
    np.testing.assert_allclose(out["scores"]["scores"], want.numpy(), rtol=1e-4, atol=1e-3)
