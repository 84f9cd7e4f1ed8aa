"""Streaming pieces: chunked causal encoding equals full encoding; step-wise prediction."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfkd.models import ConformerEncoder, LstmEncoder, LstmPrediction, StatelessPrediction

F = 12


def features(frames, batch=2, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=(batch, frames, F)), tf.float32)


def causal_conformer(**overrides):
    """A small causal `ConformerEncoder`; ``overrides`` change its arguments."""
    args = dict(
        num_layers=2,
        dim=16,
        num_heads=2,
        ff_expansion=2,
        kernel_size=3,
        subsampling_filters=4,
        causal=True,
        dropout=0.0,
    )
    return ConformerEncoder(**{**args, **overrides})


ENCODERS = {
    "conformer4": lambda: causal_conformer(subsampling_factor=4, left_context=5),
    "conformer8_chunk2": lambda: causal_conformer(
        kernel_size=4, subsampling_factor=8, chunk_size=2, left_context=3
    ),
    # factor 6 with chunks of 2 frames: the last chunk of an odd-length stream is half padding
    "conformer6_conv1d_chunk2": lambda: causal_conformer(
        subsampling_factor=6, subsampling_filters=5, chunk_size=2, left_context=4, frontend="conv1d"
    ),
    "conformer8_stack": lambda: causal_conformer(
        subsampling_factor=8, left_context=4, frontend="stack"
    ),
    "lstm_stack4_reduce2": lambda: LstmEncoder(
        num_layers=2, units=8, frontend_factor=4, frontend_units=8, layer_reductions=(2, 1)
    ),
    "lstm_conv6": lambda: LstmEncoder(
        num_layers=2, units=8, frontend="conv", frontend_factor=6, frontend_units=8
    ),
}


def stream(encoder, x, chunk):
    state = encoder.initial_state(x.shape[0])
    outs = []
    for start in range(0, x.shape[1], chunk):
        out, state = encoder.stream_step(x[:, start : start + chunk], state)
        outs.append(out)
    return tf.concat(outs, axis=1)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_streaming_equals_full_encoding(name):
    encoder = ENCODERS[name]()
    frames = 96  # a multiple of every chunk below
    x = features(frames)
    full, _ = encoder(x, tf.constant([frames, frames]))
    for multiple in (1, 2):
        chunk = multiple * encoder.chunk_multiple * (2 if name == "conformer4" else 1)
        np.testing.assert_allclose(stream(encoder, x, chunk), full, atol=2e-5)


def stream_padded(encoder, x, lengths, chunk):
    """Streams `x [B, T, F]` in zero-padded chunks of `chunk` frames, telling each step how many
    of its frames are real (as the on-device streaming graph does on the last chunk)."""
    frames = x.shape[1]
    padded = tf.pad(x, [[0, 0], [0, -frames % chunk], [0, 0]])
    state = encoder.initial_state(x.shape[0])
    outs = []
    for start in range(0, frames, chunk):
        valid = tf.clip_by_value(lengths - start, 0, chunk)
        out, state = encoder.stream_step(padded[:, start : start + chunk], state, valid)
        outs.append(out)
    return tf.concat(outs, axis=1)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_streaming_a_partial_last_chunk_equals_full_encoding(name):
    """Lengths that are not a multiple of the chunk: the last chunk's padding must not reach
    the last real encoder frames (a convolutional front end reads past the end there)."""
    encoder = ENCODERS[name]()
    lengths = tf.constant([93, 77])
    # Features past each length are what a padded batch holds there: not zero.
    x = features(93)
    encoder(x, lengths)
    # Trained biases are not zero (fresh ones are, and would hide padding that leaks through).
    rng = np.random.default_rng(1)
    for v in encoder.weights:
        v.assign(0.3 * rng.normal(size=v.shape).astype(np.float32))
    full, out_lengths = encoder(x, lengths)
    chunk = 2 * encoder.chunk_multiple
    streamed = stream_padded(encoder, x, lengths, chunk)
    for b, n in enumerate(out_lengths.numpy()):
        np.testing.assert_allclose(streamed[b, :n], full[b, :n], atol=2e-5)


def test_conformer_stream_step_traces_once_for_any_chunk_length():
    encoder = ENCODERS["conformer4"]()
    x = features(48)
    full, _ = encoder(x, tf.constant([48, 48]))
    state = encoder.initial_state(2)
    spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), state)
    step = tf.function(
        encoder.stream_step, input_signature=[tf.TensorSpec([2, None, F], tf.float32), spec]
    )
    a, state = step(x[:, :16], state)
    b, state = step(x[:, 16:48], state)
    np.testing.assert_allclose(tf.concat([a, b], 1), full, atol=2e-5)
    assert step.experimental_get_tracing_count() == 1


def test_streaming_needs_causal_encoder_with_finite_context():
    with pytest.raises(ValueError, match="causal"):
        ConformerEncoder(num_layers=1, dim=8, num_heads=2, causal=True).initial_state(1)
    with pytest.raises(ValueError, match="bidirectional"):
        LstmEncoder(num_layers=1, units=4, bidirectional=True).initial_state(1)


@pytest.mark.parametrize(
    "net",
    [
        lambda: LstmPrediction(11, embed_dim=4, units=6, num_layers=2, dropout=0.0),
        lambda: StatelessPrediction(11, context_size=3, embed_dim=4, units=6, dropout=0.0),
    ],
    ids=["lstm", "stateless"],
)
def test_prediction_step_equals_full_call(net):
    net = net()
    labels = tf.constant([[3, 4, 5, 6, 2], [1, 2, 7, 0, 0]])
    full = net(labels)
    state = net.initial_state(2)
    steps = []
    for label in tf.unstack(tf.pad(labels, [[0, 0], [1, 0]]), axis=1)[:-1]:
        out, state = net.step(label, state)
        steps.append(out)
    # step(blank) gives position 0, step(y_u) position u; the last label is not consumed here.
    np.testing.assert_allclose(tf.stack(steps, 1), full[:, :-1], atol=1e-5)
    out, state = net.step(labels[:, -1], state)
    np.testing.assert_allclose(out, full[:, -1], atol=1e-5)


_TFLITE_SCRIPT = """
import json, sys, tempfile
import keras, numpy as np, tensorflow as tf
from tfkd.models import conformer_student

model = conformer_student(9, num_layers=1, dim=16, num_heads=2, left_context=4,
                          prediction_units=8, prediction_embed_dim=4, joint_dim=8, dropout=0.0)
model.build_by_calling(num_features=12)
enc_state = model.encoder.initial_state(1)
pred_state = model.prediction.initial_state(1)
state = {"encoder": enc_state, "prediction": pred_state}
flat = tf.nest.flatten(state)

def step(chunk, label, *flat_state):
    st = tf.nest.pack_sequence_as(state, list(flat_state))
    enc, new_enc = model.encoder.stream_step(chunk, st["encoder"])
    pred, new_pred = model.prediction.step(label, st["prediction"])
    logits = model.joint.combine(model.joint.project_encoder(enc[:, -1]),
                                 model.joint.project_prediction(pred))
    return [logits] + tf.nest.flatten({"encoder": new_enc, "prediction": new_pred})

specs = [tf.TensorSpec([1, 8, 12], tf.float32), tf.TensorSpec([1], tf.int32)]
specs += [tf.TensorSpec(t.shape, t.dtype) for t in flat]
archive = keras.export.ExportArchive()
archive.track(model)
archive.add_endpoint("serve", step, input_signature=specs)
path = tempfile.mkdtemp()
archive.write_out(path, verbose=False)
converter = tf.lite.TFLiteConverter.from_saved_model(path)
converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
runner = tf.lite.Interpreter(model_content=converter.convert()).get_signature_runner()
x = np.random.default_rng(0).normal(size=(1, 32, 12)).astype(np.float32)
tfl_state, tf_state, diffs = [t.numpy() for t in flat], flat, []
for i, label in enumerate([0, 3, 5, 2]):
    chunk = x[:, 8 * i : 8 * i + 8]
    out = runner(chunk=chunk, label=np.array([label], np.int32),
                 **{f"flat_state_{j}": v for j, v in enumerate(tfl_state)})
    tfl_state = [out[f"output_{j + 1}"] for j in range(len(flat))]
    ref = step(tf.constant(chunk), tf.constant([label]), *tf_state)
    tf_state = ref[1:]
    diffs.append(float(np.abs(out["output_0"] - ref[0].numpy()).max()))
print(json.dumps(diffs))
"""


@pytest.mark.slow
def test_streaming_pieces_convert_to_tflite_builtins(tmp_path):
    """Encoder stream step + prediction step + joint combine: builtins only, same numbers.

    Runs in a subprocess because converter failures can abort the process.
    """
    script = tmp_path / "convert.py"
    script.write_text(_TFLITE_SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    diffs = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(diffs) == 4 and max(diffs) < 1e-4
