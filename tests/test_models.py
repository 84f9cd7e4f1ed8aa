"""Models: shapes and length rules, causality, padding invariance, joint, transducer, precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkd.models import (
    ConformerEncoder,
    Conv1DSubsampler,
    ConvSubsampler,
    Encoder,
    Joint,
    LstmEncoder,
    LstmPrediction,
    StackingSubsampler,
    StatelessPrediction,
    Transducer,
    conformer_student,
    conformer_teacher,
    low_frame_rate_student,
    lstm_student,
    subsampled_lengths,
)
from tfkd.models.conformer import apply_rotary, attention_mask

F = 12  # feature width: small for speed; nothing depends on 80


def conformer(causal, factor=4, chunk_size=1, left_context=None, frontend="conv"):
    return ConformerEncoder(
        num_layers=2,
        dim=16,
        num_heads=2,
        ff_expansion=2,
        kernel_size=3,
        subsampling_factor=factor,
        subsampling_filters=4,
        causal=causal,
        chunk_size=chunk_size,
        left_context=left_context,
        dropout=0.0,
        frontend=frontend,
    )


def lstm(bidirectional=False, frontend="stack", factor=4, reductions=None):
    return LstmEncoder(
        num_layers=2,
        units=8,
        bidirectional=bidirectional,
        frontend=frontend,
        frontend_factor=factor,
        frontend_units=8,
        layer_reductions=reductions,
        dropout=0.0,
    )


# name -> (builder, total reduction, output width)
ENCODERS = {
    "conformer4": (lambda: conformer(False, 4), 4, 16),
    "conformer6": (lambda: conformer(False, 6), 6, 16),
    "conformer8": (lambda: conformer(False, 8), 8, 16),
    "causal_conformer4": (lambda: conformer(True, 4, left_context=3), 4, 16),
    "causal_conformer8_chunk2": (lambda: conformer(True, 8, chunk_size=2), 8, 16),
    "causal_conformer6_conv1d": (
        lambda: conformer(True, 6, left_context=3, frontend="conv1d"),
        6,
        16,
    ),
    "causal_conformer8_stack": (
        lambda: conformer(True, 8, left_context=3, frontend="stack"),
        8,
        16,
    ),
    "uni_lstm_stack4": (lambda: lstm(), 4, 8),
    "uni_lstm_conv6": (lambda: lstm(frontend="conv", factor=6), 6, 8),
    "uni_lstm_stack2_x2": (lambda: lstm(factor=2, reductions=(2, 1)), 4, 8),
    "bi_lstm_stack4": (lambda: lstm(bidirectional=True), 4, 16),
    "lstm_no_frontend": (lambda: lstm(frontend=None, factor=1), 1, 8),
}
CAUSAL = [
    "causal_conformer4",
    "causal_conformer8_chunk2",
    "causal_conformer6_conv1d",
    "causal_conformer8_stack",
    "uni_lstm_stack4",
    "uni_lstm_conv6",
]
NON_CAUSAL = ["conformer4", "bi_lstm_stack4"]


def features(batch, frames, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=(batch, frames, F)), tf.float32)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_every_encoder_satisfies_the_encoder_contract(name):
    build, factor, width = ENCODERS[name]
    encoder = build()
    assert isinstance(encoder, Encoder)
    assert isinstance(encoder, keras.layers.Layer)
    assert (encoder.reduction_factor, encoder.output_dim) == (factor, width)
    assert encoder.causal is not name.startswith(("conformer", "bi_"))
    assert encoder.chunk_multiple % encoder.reduction_factor == 0
    assert type(encoder).from_config(encoder.get_config()).get_config() == encoder.get_config()


def test_the_encoder_contract_rejects_other_layers():
    assert not isinstance(Joint(5, 8), Encoder)
    assert not isinstance(StackingSubsampler(4, 8), Encoder)


def test_subsampled_lengths_is_ceil_division():
    lengths = tf.constant([0, 1, 4, 5, 8, 9, 50])
    np.testing.assert_array_equal(subsampled_lengths(lengths, 4), [0, 1, 1, 2, 2, 3, 13])
    np.testing.assert_array_equal(subsampled_lengths(lengths, 6), [0, 1, 1, 1, 2, 2, 9])


@pytest.mark.parametrize("factor,frames", [(4, 13), (6, 13), (8, 17), (2, 5)])
def test_frontends_follow_length_rule(factor, frames):
    x, lengths = features(2, frames), tf.constant([frames, 3])
    for layer in (
        ConvSubsampler(factor, 4, 8),
        Conv1DSubsampler(factor, 4, 8),
        StackingSubsampler(factor, 8),
    ):
        y, y_lengths = layer(x, lengths)
        expected = -(-frames // factor)
        assert tuple(y.shape) == (2, expected, 8)
        np.testing.assert_array_equal(y_lengths, [expected, -(-3 // factor)])


def test_conv_subsampler_rejects_unsupported_factor():
    with pytest.raises(ValueError, match="2\\^a"):
        ConvSubsampler(5)


def test_conformer_rejects_unknown_front_end():
    with pytest.raises(ValueError, match="front end 'mel'"):
        ConformerEncoder(frontend="mel")


def test_lstm_encoder_front_ends_and_their_errors():
    assert isinstance(lstm(frontend="conv1d", factor=6).frontend, Conv1DSubsampler)
    with pytest.raises(ValueError, match="front end 'mel'; use one of conv, conv1d, stack"):
        lstm(frontend="mel")
    with pytest.raises(ValueError, match="frontend=None needs frontend_factor 1, got 4"):
        lstm(frontend=None, factor=4)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_shapes_and_lengths(name):
    build, factor, width = ENCODERS[name]
    encoder = build()
    y, lengths = encoder(features(2, 50), tf.constant([50, 23]))
    frames = -(-50 // factor)
    assert encoder.reduction_factor == factor
    assert tuple(y.shape) == (2, frames, width)
    np.testing.assert_array_equal(lengths, [frames, -(-23 // factor)])
    np.testing.assert_array_equal(encoder.output_lengths(tf.constant([50, 23])), lengths)
    # Frames past a sequence's end are zero, valid ones are not.
    assert np.all(y[1, lengths[1] :].numpy() == 0)
    assert np.all(np.abs(y[1, : lengths[1]].numpy()).sum(-1) > 0)


def _future_perturbation(name, t0=32):
    build, factor, _ = ENCODERS[name]
    encoder = build()
    x = features(1, 48)
    noise = np.zeros(x.shape, np.float32)
    noise[:, t0:] = 3.0 * np.random.default_rng(1).normal(size=(1, 48 - t0, F))
    lengths = tf.constant([48])
    y1, _ = encoder(x, lengths)
    y2, _ = encoder(x + noise, lengths)
    return np.abs(y1.numpy() - y2.numpy()).max(-1)[0], t0 // factor


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_encoders_ignore_the_future(name):
    diff, boundary = _future_perturbation(name)
    # Chunked attention may look ahead within a chunk; 32 frames is a chunk boundary here.
    assert diff[:boundary].max() < 1e-5
    assert diff[boundary:].min() > 1e-4


@pytest.mark.parametrize("name", NON_CAUSAL)
def test_non_causal_encoders_see_the_future(name):
    diff, boundary = _future_perturbation(name)
    assert diff[:boundary].max() > 1e-3


def test_causal_chunk_size_gives_right_context_inside_a_chunk():
    encoder = conformer(True, 4, chunk_size=2)
    x = features(1, 32)
    noise = np.zeros(x.shape, np.float32)
    noise[:, 20:24] = 5.0  # encoder frame 5: the second frame of chunk [4, 5]
    y1, _ = encoder(x, tf.constant([32]))
    y2, _ = encoder(x + noise, tf.constant([32]))
    diff = np.abs(y1.numpy() - y2.numpy()).max(-1)[0]
    assert diff[:4].max() < 1e-5
    assert diff[4] > 1e-4  # sees one frame ahead, its chunk mate


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_padding_invariance(name):
    build, factor, _ = ENCODERS[name]
    encoder = build()
    alone = features(1, 21, seed=2)
    # Padding holds large garbage, not zeros, to prove it is masked.
    batch = np.concatenate([alone.numpy(), 10.0 * np.ones((1, 19, F), np.float32)], axis=1)
    batch = np.concatenate([batch, features(1, 40, seed=3).numpy()], axis=0)
    y_alone, n = encoder(alone, tf.constant([21]))
    y_batch, n_batch = encoder(tf.constant(batch), tf.constant([21, 40]))
    assert int(n[0]) == int(n_batch[0]) == -(-21 // factor)
    np.testing.assert_allclose(y_batch[0, : n[0]], y_alone[0], atol=1e-5)


def test_non_causal_conv_module_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        ConformerEncoder(num_layers=1, dim=8, num_heads=2, kernel_size=4, causal=False)


@pytest.mark.parametrize("prediction", ["lstm", "stateless"])
def test_prediction_networks_are_blank_prefixed_and_causal_in_labels(prediction):
    net = (
        LstmPrediction(11, embed_dim=4, units=6, num_layers=2, dropout=0.0)
        if prediction == "lstm"
        else StatelessPrediction(11, context_size=2, embed_dim=4, units=6, dropout=0.0)
    )
    labels = tf.constant([[3, 4, 5, 6], [1, 2, 0, 0]])
    out = net(labels)
    assert tuple(out.shape) == (2, 5, 6)
    changed = net(tf.constant([[3, 4, 9, 6], [1, 2, 0, 0]]))
    diff = np.abs(out.numpy() - changed.numpy()).max(-1)
    np.testing.assert_array_equal(diff[:, :3], 0.0)  # positions before label 3 is read
    assert diff[0, 3] > 1e-4
    # Position 0 sees only blank, so it is the same for every sequence.
    np.testing.assert_allclose(out[0, 0], out[1, 0], atol=1e-6)


def test_stateless_prediction_forgets_beyond_its_context():
    net = StatelessPrediction(11, context_size=2, embed_dim=4, units=6, dropout=0.0)
    a = net(tf.constant([[3, 4, 5, 6]]))
    b = net(tf.constant([[7, 8, 5, 6]]))
    np.testing.assert_allclose(a[0, 4], b[0, 4], atol=1e-6)  # context (5, 6) in both
    assert np.abs(a[0, 3] - b[0, 3]).max() > 1e-4  # context (4, 5) vs (8, 5)


def test_joint_shapes_chunks_and_pieces():
    joint = Joint(vocab_size=7, joint_dim=5)
    rng = np.random.default_rng(4)
    enc = tf.constant(rng.normal(size=(2, 9, 6)), tf.float32)
    pred = tf.constant(rng.normal(size=(2, 4, 3)), tf.float32)
    full = joint(enc, pred)
    assert tuple(full.shape) == (2, 9, 4, 7) and full.dtype == tf.float32
    chunks = tf.concat([joint(enc[:, t : t + 4], pred) for t in range(0, 9, 4)], axis=1)
    np.testing.assert_allclose(chunks, full, atol=1e-6)
    # Per-step decoding form: [B, J] + [B, J] -> [B, V].
    step = joint.combine(joint.project_encoder(enc[:, 5]), joint.project_prediction(pred[:, 2]))
    np.testing.assert_allclose(step, full[:, 5, 2], atol=1e-6)
    # Reference: out(tanh(We e + b + Wp p)).
    we, be = joint.encoder_proj.kernel.numpy(), joint.encoder_proj.bias.numpy()
    wp = joint.prediction_proj.kernel.numpy()
    wo, bo = joint.output_layer.kernel.numpy(), joint.output_layer.bias.numpy()
    hidden = np.tanh(enc.numpy()[1, 3] @ we + be + pred.numpy()[1, 1] @ wp)
    np.testing.assert_allclose(full[1, 3, 1], hidden @ wo + bo, atol=1e-5)


def tiny_student(**kwargs):
    args = dict(
        num_layers=1,
        dim=8,
        num_heads=2,
        ff_expansion=2,
        kernel_size=3,
        subsampling_filters=4,
        left_context=8,
        prediction_units=8,
        prediction_embed_dim=4,
        joint_dim=8,
        dropout=0.0,
    )
    return conformer_student(9, **{**args, **kwargs})


def batch(frames=(30, 17), labels=((1, 2, 3), (4, 5, 0))):
    return {
        "features": features(len(frames), max(frames), seed=5),
        "feature_lengths": tf.constant(frames),
        "labels": tf.constant(labels),
    }


def test_transducer_call_and_build():
    model = tiny_student().build_by_calling(num_features=F)
    assert model.trainable_variables
    assert model.reduction_factor == 4 and model.causal
    out = model(batch())
    assert tuple(out["logits"].shape) == (2, 8, 4, 9)
    assert out["logits"].dtype == tf.float32
    np.testing.assert_array_equal(out["logit_lengths"], [8, 5])
    np.testing.assert_array_equal(model.output_lengths(tf.constant([30, 17])), [8, 5])
    enc, enc_lengths = model.encode(batch()["features"], tf.constant([30, 17]))
    pred = model.predict_labels(batch()["labels"])
    np.testing.assert_allclose(model.joint(enc, pred), out["logits"], atol=1e-6)
    np.testing.assert_array_equal(enc_lengths, [8, 5])


@pytest.mark.parametrize(
    "builder,factor", [(lstm_student, 4), (conformer_student, 4), (low_frame_rate_student, 8)]
)
def test_student_presets_frame_rates(builder, factor):
    kwargs = dict(prediction_units=8, joint_dim=8, dropout=0.0)
    if builder is lstm_student:
        kwargs.update(num_layers=1, units=8, frontend_units=8)
    else:
        kwargs.update(num_layers=1, dim=8, num_heads=2)
    model = builder(9, **kwargs)
    out = model(batch())
    assert model.reduction_factor == factor and model.causal
    assert out["logits"].shape[1] == -(-30 // factor)


def test_teacher_preset_is_non_causal():
    small = conformer_teacher(9, num_layers=1, dim=8, num_heads=2, joint_dim=8, dropout=0.0)
    assert not small.causal and small.reduction_factor == 4
    assert small(batch())["logits"].shape == (2, 8, 4, 9)


@pytest.mark.slow
def test_teacher_preset_has_about_10m_params_by_default():
    full = conformer_teacher(256).build_by_calling(num_features=80)
    assert 8e6 < full.count_params() < 12e6


def test_gradient_step_updates_every_variable():
    model = tiny_student(prediction="stateless").build_by_calling(num_features=F)
    optimizer = keras.optimizers.Adam(1e-2)
    before = [v.numpy().copy() for v in model.trainable_variables]

    def loss_fn():
        logits = model(batch(), training=True)["logits"]
        return -tf.reduce_mean(tf.nn.log_softmax(logits)[..., 1])

    with tf.GradientTape() as tape:
        loss = loss_fn()
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads)
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    for old, var in zip(before, model.trainable_variables, strict=True):
        assert np.abs(old - var.numpy()).max() > 0, var.path
    assert float(loss_fn()) < float(loss)


@pytest.mark.parametrize("frontend", ["conv", "conv1d", "stack"])
def test_config_round_trip_gives_the_same_function(frontend):
    model = tiny_student(chunk_size=2, frontend=frontend).build_by_calling(num_features=F)
    clone = Transducer.from_config(model.get_config()).build_by_calling(num_features=F)
    assert clone.encoder.chunk_size == 2 and clone.encoder.left_context == 8
    assert clone.encoder.frontend_kind == frontend
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(batch())["logits"], model(batch())["logits"], atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_float32_logits(policy):
    reference = tiny_student().build_by_calling(num_features=F)
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = tiny_student().build_by_calling(num_features=F)
        model.set_weights(reference.get_weights())
        with tf.GradientTape() as tape:
            out = model(batch(), training=True)
            loss = tf.reduce_mean(tf.nn.log_softmax(out["logits"]))
        grads = tape.gradient(loss, model.trainable_variables)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    enc, _ = model.encode(batch()["features"], batch()["feature_lengths"])
    assert enc.dtype == keras.mixed_precision.Policy(policy).compute_dtype
    assert out["logits"].dtype == tf.float32
    assert all(v.dtype == tf.float32 for v in model.trainable_variables)
    assert all(np.isfinite(tf.convert_to_tensor(g).numpy()).all() for g in grads)
    # Same weights, lower precision: close to the float32 model, not equal to it.
    diff = np.abs(out["logits"].numpy() - reference(batch())["logits"].numpy()).max()
    assert 0 < diff < 0.1


def test_keras_file_round_trip_restores_weights(tmp_path):
    model = tiny_student().build_by_calling(num_features=F)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded(batch())["logits"], model(batch())["logits"], atol=1e-6)


def test_attention_mask_chunks_and_left_context():
    pos = tf.range(5)
    mask = attention_mask(pos, pos, tf.constant([[True] * 4 + [False]]), True, 2, 1)
    expected = [  # query rows, key columns; chunks {0,1} {2,3} {4}; key 4 is padding
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 1, 0],
    ]
    np.testing.assert_array_equal(mask[0, 0].numpy().astype(int), expected)
    full = attention_mask(pos, pos, tf.ones([1, 5], tf.bool), False)
    assert bool(tf.reduce_all(full))


def test_rotary_scores_depend_only_on_distance():
    rng = np.random.default_rng(6)
    q = tf.constant(rng.normal(size=(1, 1, 1, 8)), tf.float32)
    k = tf.constant(rng.normal(size=(1, 1, 1, 8)), tf.float32)

    def score(i, j):
        qi = apply_rotary(q, tf.constant([i]))
        kj = apply_rotary(k, tf.constant([j]))
        return float(tf.reduce_sum(qi * kj))

    np.testing.assert_allclose(score(3, 1), score(103, 101), rtol=1e-4)
    assert abs(score(3, 1) - score(3, 2)) > 1e-3
    np.testing.assert_allclose(score(0, 0), float(tf.reduce_sum(q * k)), rtol=1e-6)


@pytest.mark.parametrize("kind", ["conformer", "lstm"])
def test_tf_checkpoint_round_trip_covers_every_weight(kind, tmp_path):
    def build():
        if kind == "conformer":
            return tiny_student(num_layers=2).build_by_calling(num_features=F)
        return lstm_student(
            9,
            num_layers=2,
            units=8,
            frontend="conv",
            frontend_units=8,
            prediction_units=8,
            prediction_embed_dim=4,
            joint_dim=8,
            dropout=0.0,
        ).build_by_calling(num_features=F)

    model, other = build(), build()
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    assert np.abs(other(batch())["logits"] - model(batch())["logits"]).max() > 1e-3
    tf.train.Checkpoint(model=other).read(path).assert_existing_objects_matched()
    for a, b in zip(model.weights, other.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
