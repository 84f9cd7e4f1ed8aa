"""TFLite students: builtins only, TF parity, streaming == whole-utterance, input checks.

Conversions run in a child process (`tfkd.export.tflite.convert_in_subprocess`).
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny_students import tiny_lstm_student

from tfkd import decoding, metrics
from tfkd.export import streaming, tflite
from tfkd.features import LogMel
from tfkd.models import conformer_student

VOCAB = 20
LENGTHS = (7000, 3100, 12345, 5360)


def tiny_lstm(seed=3):
    return tiny_lstm_student(VOCAB, seed)


def frontend():
    layer = LogMel()
    layer(tf.zeros([1, 800]))
    return layer


def waves(seed=0, lengths=LENGTHS):
    rng = np.random.default_rng(seed)
    return [
        (0.3 * np.sin(np.arange(n) / (5.0 + i)) + 0.05 * rng.normal(size=n)).astype(np.float32)
        for i, n in enumerate(lengths)
    ]


def reference(model, fe, wave):
    """tfkd's own whole-utterance greedy decoding: (token ids, score)."""
    feats, lengths = fe(wave[None], tf.constant([len(wave)]))
    ids, n, score = decoding.greedy_decode(model, feats, lengths)
    return ids.numpy()[0, : int(n[0])].tolist(), float(score[0])


@pytest.fixture(scope="module")
def lstm_stream(tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite")
    model, fe = tiny_lstm(), frontend()
    paths = tflite.export_student_tflite(
        model, fe, str(out), "float32", chunk_ms=160, kinds=("streaming",)
    )
    refs = [reference(model, fe, wave) for wave in waves()]
    return {"model": model, "frontend": fe, "paths": paths, "references": refs}


def test_streaming_model_has_builtin_ops_only(lstm_stream):
    ops = tflite.op_names(model_path=lstm_stream["paths"]["streaming"])
    assert not [o for o in ops if o.startswith("Flex") or o in ("CUSTOM", "DELEGATE")]
    # Front end, encoder and greedy steps are all in the graph, unrolled: no control flow.
    assert {"RFFT2D", "LOG", "ARG_MAX", "LOG_SOFTMAX", "FULLY_CONNECTED", "LOGISTIC"} <= ops
    assert "WHILE" not in ops


def test_streaming_logits_and_tokens_match_tf(lstm_stream):
    model, fe = lstm_stream["model"], lstm_stream["frontend"]
    graph = streaming.StreamingGraph(model, fe, chunk_ms=160)
    runner = tflite.TFLiteRunner(lstm_stream["paths"]["streaming"])
    wave = waves()[2]
    state_tf = graph.initial_state(wave[: graph.history])
    state_lite = list(state_tf)
    rest = wave[graph.history :]
    emitted = 0
    for start in range(0, len(rest), graph.chunk_samples):
        chunk = np.zeros([1, graph.chunk_samples], np.float32)
        piece = rest[start : start + graph.chunk_samples]
        chunk[0, : len(piece)] = piece
        valid = np.array([len(piece)], np.int32)
        want = graph.step(tf.constant(chunk), tf.constant(valid), *state_tf)
        got = runner(
            audio_chunk=chunk,
            valid_samples=valid,
            **dict(zip(graph.state_names, state_lite, strict=True)),
        )
        np.testing.assert_allclose(got["log_probs"], want["log_probs"], atol=2e-4)
        np.testing.assert_array_equal(got["tokens"], want["tokens"])
        np.testing.assert_allclose(got["score"], want["score"], rtol=1e-4, atol=1e-3)
        state_tf = [want[f"state_{i}"].numpy() for i in range(len(graph.state_names))]
        state_lite = [got[f"state_{i}"] for i in range(len(graph.state_names))]
        emitted += int((got["tokens"] > 0).sum())
    assert emitted > 0  # the token comparison is not vacuous


@pytest.mark.parametrize(
    "push",
    [pytest.param(160, marks=pytest.mark.slow), 999, pytest.param(4000, marks=pytest.mark.slow)],
)
def test_streaming_equals_whole_utterance_decoding(lstm_stream, push):
    runner = tflite.TFLiteRunner(lstm_stream["paths"]["streaming"])
    meta = tflite.load_metadata(lstm_stream["paths"]["metadata"])
    assert meta["chunk_samples"] == 2560 and meta["history_samples"] == 240
    for wave, (want, score) in zip(waves(), lstm_stream["references"], strict=True):
        session = tflite.stream_waveform(runner, meta, wave, push_samples=push)
        assert session.tokens == want and len(want) > 0
        assert session.score == pytest.approx(score, rel=1e-4, abs=1e-3)


def test_streaming_of_sub_window_audio_is_empty(lstm_stream):
    runner = tflite.TFLiteRunner(lstm_stream["paths"]["streaming"])
    meta = tflite.load_metadata(lstm_stream["paths"]["metadata"])
    assert tflite.transcribe_streaming(runner, meta, np.zeros([200], np.float32)) == []
    assert tflite.transcribe_streaming(runner, meta, np.zeros([0], np.float32)) == []


def test_interpreter_rejects_wrong_inputs(lstm_stream):
    runner = tflite.TFLiteRunner(lstm_stream["paths"]["streaming"])
    meta = tflite.load_metadata(lstm_stream["paths"]["metadata"])
    initial = tflite.StreamingSession(runner, meta).meta_initial_state()
    state = dict(zip(meta["state_names"], initial, strict=True))
    good = {"audio_chunk": np.zeros([1, 2560], np.float32), "valid_samples": np.array([2560])}
    good["valid_samples"] = good["valid_samples"].astype(np.int32)
    runner(**good, **state)  # accepted
    with pytest.raises(
        ValueError, match=r"'audio_chunk' must have shape \[1, 2560\], got \[1, 2000\]"
    ):
        runner(**{**good, "audio_chunk": np.zeros([1, 2000], np.float32)}, **state)
    with pytest.raises(
        ValueError, match=r"'audio_chunk' must have shape \[1, 2560\], got \[2560\]"
    ):
        runner(**{**good, "audio_chunk": np.zeros([2560], np.float32)}, **state)
    with pytest.raises(ValueError, match="'valid_samples' must be int32, got int64"):
        runner(**{**good, "valid_samples": np.array([5], np.int64)}, **state)
    with pytest.raises(ValueError, match=r"missing inputs \['audio'\]"):
        runner(**good, **{k: v for k, v in state.items() if k != "audio"})


def test_streaming_graph_rejects_unusable_configurations():
    model, fe = tiny_lstm(), frontend()
    with pytest.raises(ValueError, match="multiple of 40 ms"):
        streaming.StreamingGraph(model, fe, chunk_ms=100)
    with pytest.raises(ValueError, match="cannot stream"):
        streaming.StreamingGraph(model, LogMel(normalization="utterance"), chunk_ms=160)


@pytest.mark.slow
def test_failed_conversion_raises_with_the_converter_log(tmp_path):
    with pytest.raises(RuntimeError, match="TFLite conversion of .* failed"):
        tflite.convert_in_subprocess(str(tmp_path / "missing"), str(tmp_path / "x.tflite"))


# ----------------------------------------------------------------------------------------------
# Slow: the whole-utterance model, quantised models and a Conformer student.


@pytest.mark.slow
def test_whole_utterance_model_matches_tf(tmp_path):
    model, fe = tiny_lstm(), frontend()
    paths = tflite.export_student_tflite(model, fe, str(tmp_path), "float32", kinds=("whole",))
    runner = tflite.TFLiteRunner(paths["whole"])
    fn = streaming.whole_utterance_fn(model, fe)
    for wave in waves():
        want, _ = reference(model, fe, wave)
        assert tflite.transcribe_whole(runner, wave) == want and want
        out = runner(waveform=wave[None], waveform_length=np.array([len(wave)], np.int32))
        tf_out = fn(tf.constant(wave[None]), tf.constant([len(wave)]))
        np.testing.assert_allclose(out["frame_log_probs"], tf_out["frame_log_probs"], atol=2e-4)
    with pytest.raises(ValueError, match=r"'waveform' must have shape \[1, \?\]"):
        runner(waveform=np.zeros([2, 100], np.float32), waveform_length=np.array([1, 1], np.int32))


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["dynamic_int8", "full_int8"])
def test_quantised_models_convert_builtin_and_stay_close(tmp_path, quantization):
    model, fe = tiny_lstm(), frontend()
    float_paths = tflite.export_student_tflite(
        model, fe, str(tmp_path), "float32", chunk_ms=160, kinds=("streaming",)
    )
    paths = tflite.export_student_tflite(
        model,
        fe,
        str(tmp_path),
        quantization,
        chunk_ms=160,
        representative_waveforms=waves(seed=5),
        kinds=("streaming",),
    )
    ops = tflite.op_names(model_path=paths["streaming"])
    assert not [o for o in ops if o.startswith("Flex")]
    if quantization == "full_int8":
        assert "QUANTIZE" in ops or "DEQUANTIZE" in ops
    assert os.path.getsize(paths["streaming"]) < os.path.getsize(float_paths["streaming"])
    meta = tflite.load_metadata(paths["metadata"])
    runner = tflite.TFLiteRunner(paths["streaming"])
    refs, hyps = [], []
    for wave in waves():
        want, _ = reference(model, fe, wave)
        refs.append(" ".join(map(str, want)))
        hyps.append(" ".join(map(str, tflite.transcribe_streaming(runner, meta, wave))))
    # Token error rate against the float Keras student. A random tiny model, whose outputs are
    # near ties everywhere, is a worst case for quantisation.
    token_error_rate = metrics.corpus_errors(refs, hyps).wer
    if quantization == "dynamic_int8":
        assert token_error_rate <= 10.0, hyps
    else:
        # Full int8 runs and emits valid ids, but on this random tiny model its int8 LSTM
        # state drifts (measured token error rate ~80%): a known limitation, see docs.
        ids = [int(t) for h in hyps for t in h.split()]
        assert ids and all(1 <= t < VOCAB for t in ids)


@pytest.mark.slow
@pytest.mark.parametrize("frontend_kind", ["conv", "conv1d"])
def test_conformer_student_streams_like_whole_utterance(tmp_path, frontend_kind):
    keras.utils.set_random_seed(4)
    model = conformer_student(
        VOCAB,
        num_layers=1,
        dim=16,
        num_heads=2,
        ff_expansion=2,
        kernel_size=3,
        subsampling_filters=4,
        left_context=8,
        prediction_units=16,
        prediction_embed_dim=8,
        joint_dim=16,
        dropout=0.0,
        frontend=frontend_kind,
    ).build_by_calling(num_features=80)
    # Trained front-end biases are not zero; fresh zero ones would hide padding that leaks
    # into the last encoder frame of a stream.
    rng = np.random.default_rng(5)
    for conv in model.encoder.frontend.convs:
        conv.bias.assign(0.5 * rng.normal(size=conv.bias.shape).astype(np.float32))
    fe = frontend()
    paths = tflite.export_student_tflite(
        model, fe, str(tmp_path), "float32", chunk_ms=160, kinds=("whole", "streaming")
    )
    # The whole-utterance graph's convolutional front end needs static channel counts: a
    # regression here fails the conversion with "TF Select ops: Conv2D" (or Conv1D's ops).
    whole = tflite.TFLiteRunner(paths["whole"])
    runner = tflite.TFLiteRunner(paths["streaming"])
    meta = tflite.load_metadata(paths["metadata"])
    # Frame counts that are multiples of the conv front end's factor (40, 72) and that are not
    # (42, 18, 76, 32): the last chunk's padding is masked at every stage, as in `call`.
    # The greedy path's score sums every frame's log-probabilities, the last frame's included.
    for wave in waves(lengths=(240 + 160 * 40, 240 + 160 * 72, *LENGTHS)):
        want, score = reference(model, fe, wave)
        assert want  # not vacuous
        assert tflite.transcribe_whole(whole, wave) == want
        session = tflite.stream_waveform(runner, meta, wave, push_samples=1234)
        assert session.tokens == want
        assert session.score == pytest.approx(score, rel=1e-4, abs=1e-3)
