"""Streaming pieces: chunked causal encoding equals full encoding; step-wise prediction."""

import numpy as np
import pytest
import tensorflow as tf

from tfkd.models import ConformerEncoder, LstmEncoder, LstmPrediction, StatelessPrediction

F = 12


def features(frames, batch=2, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=(batch, frames, F)), tf.float32)


ENCODERS = {
    "conformer4": lambda: ConformerEncoder(
        num_layers=2,
        dim=16,
        num_heads=2,
        ff_expansion=2,
        kernel_size=3,
        subsampling_factor=4,
        subsampling_filters=4,
        causal=True,
        left_context=5,
        dropout=0.0,
    ),
    "conformer8_chunk2": lambda: ConformerEncoder(
        num_layers=2,
        dim=16,
        num_heads=2,
        ff_expansion=2,
        kernel_size=4,
        subsampling_factor=8,
        subsampling_filters=4,
        causal=True,
        chunk_size=2,
        left_context=3,
        dropout=0.0,
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
