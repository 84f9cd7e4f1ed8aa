"""Exactness, gradients, input checks and compilation of tfkd.losses.rnnt_loss / rnnt_log_prob."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import rnnt_reference as ref
import tensorflow as tf

from tfkd.losses import rnnt_log_prob, rnnt_loss


def _value_and_grad(fn, logits, *args, **kwargs):
    logits = tf.convert_to_tensor(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        value = fn(logits, *args, **kwargs)
    return value.numpy(), tape.gradient(value, logits)


def _all_lengths_batch(rng, max_frames=4, max_labels=4, vocab=5):
    """One padded batch holding every (T_b, U_b) with 1 <= T_b <= 4 and 0 <= U_b <= 4."""
    pairs = [(t, u) for t in range(1, max_frames + 1) for u in range(max_labels + 1)]
    logits = rng.normal(size=(len(pairs), max_frames, max_labels + 1, vocab)).astype(np.float32)
    labels = rng.integers(1, vocab, size=(len(pairs), max_labels)).astype(np.int32)
    logit_lengths = np.array([t for t, _ in pairs], np.int32)
    label_lengths = np.array([u for _, u in pairs], np.int32)
    for b, (_, u) in enumerate(pairs):
        labels[b, u:] = -1
    return logits, labels, logit_lengths, label_lengths


def test_equals_brute_force_enumeration_for_all_tiny_lattices():
    logits, labels, logit_lengths, label_lengths = _all_lengths_batch(np.random.default_rng(1))
    log_prob = rnnt_log_prob(logits, labels, logit_lengths, label_lengths).numpy()
    loss = rnnt_loss(logits, labels, logit_lengths, label_lengths).numpy()
    expected = [
        ref.brute_force_log_prob(logits[b, :t, : u + 1], labels[b, :u])
        for b, (t, u) in enumerate(zip(logit_lengths, label_lengths, strict=True))
    ]
    np.testing.assert_allclose(log_prob, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(loss, -log_prob)
    assert log_prob.dtype == np.float32 and log_prob.shape == (len(expected),)


def test_matches_numpy_alpha_beta_on_random_batch_with_variable_lengths():
    rng = np.random.default_rng(2)
    logits, labels, logit_lengths, label_lengths = ref.random_batch(rng, 6, 9, 5, 11, scale=2.0)
    log_prob, grad = _value_and_grad(rnnt_log_prob, logits, labels, logit_lengths, label_lengths)
    logits64 = logits.astype(np.float64)
    expected = ref.batch_log_prob(logits64, labels, logit_lengths, label_lengths)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-6, atol=1e-5)
    expected_grad = ref.batch_grad(logits64, labels, logit_lengths, label_lengths)
    np.testing.assert_allclose(grad.numpy(), expected_grad, rtol=0, atol=1e-5)


def test_reference_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 3, 4))
    labels = np.array([2, 1])
    numeric = ref.numeric_grad(lambda z: ref.alpha_beta(z, labels)[2], logits)
    np.testing.assert_allclose(ref.grad_logits(logits, labels), numeric, atol=1e-8)


def test_gradient_matches_finite_differences_of_the_float64_objective():
    rng = np.random.default_rng(4)
    logits, labels, logit_lengths, label_lengths = ref.random_batch(rng, 3, 4, 3, 5)
    _, grad = _value_and_grad(rnnt_loss, logits, labels, logit_lengths, label_lengths)

    def total_nll(z):
        return -ref.batch_log_prob(z, labels, logit_lengths, label_lengths).sum()

    numeric = ref.numeric_grad(total_nll, logits.astype(np.float64))
    np.testing.assert_allclose(grad.numpy(), numeric, rtol=0, atol=2e-5)


def test_gradient_is_exactly_zero_at_padding_even_with_garbage_logits():
    rng = np.random.default_rng(5)
    logits, labels, logit_lengths, label_lengths = ref.random_batch(rng, 4, 6, 4, 7)
    clean_value, clean_grad = _value_and_grad(
        rnnt_loss, logits, labels, logit_lengths, label_lengths
    )
    garbage = logits.copy()
    for b in range(len(logits)):
        garbage[b, logit_lengths[b] :] = np.nan
        garbage[b, :, label_lengths[b] + 1 :] = 1e30
    value, grad = _value_and_grad(rnnt_loss, garbage, labels, logit_lengths, label_lengths)
    grad = grad.numpy()
    np.testing.assert_array_equal(value, clean_value)
    np.testing.assert_array_equal(grad, clean_grad.numpy())
    for b in range(len(logits)):
        assert np.all(grad[b, logit_lengths[b] :] == 0.0)
        assert np.all(grad[b, :, label_lengths[b] + 1 :] == 0.0)
        assert np.any(grad[b, : logit_lengths[b], : label_lengths[b] + 1] != 0.0)


def test_log_prob_gradient_is_minus_loss_gradient_and_labels_have_none():
    rng = np.random.default_rng(6)
    logits, labels, logit_lengths, label_lengths = ref.random_batch(rng, 2, 3, 2, 4)
    _, g_loss = _value_and_grad(rnnt_loss, logits, labels, logit_lengths, label_lengths)
    _, g_lp = _value_and_grad(rnnt_log_prob, logits, labels, logit_lengths, label_lengths)
    np.testing.assert_array_equal(g_loss.numpy(), -g_lp.numpy())
    labels_t = tf.constant(labels)
    with tf.GradientTape() as tape:
        tape.watch(labels_t)
        value = rnnt_loss(logits, labels_t, logit_lengths, label_lengths)
    assert tape.gradient(value, labels_t) is None


def test_upstream_gradient_scales_each_utterance():
    rng = np.random.default_rng(7)
    logits, labels, logit_lengths, label_lengths = ref.random_batch(rng, 3, 4, 3, 5)
    weights = tf.constant([0.5, -2.0, 3.0])
    logits_t = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits_t)
        value = tf.reduce_sum(weights * rnnt_loss(logits_t, labels, logit_lengths, label_lengths))
    grad = tape.gradient(value, logits_t).numpy()
    expected = -ref.batch_grad(logits.astype(np.float64), labels, logit_lengths, label_lengths)
    np.testing.assert_allclose(grad, expected * weights.numpy()[:, None, None, None], atol=3e-5)


def test_zero_labels_is_legal_and_sums_blank_log_probs():
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(2, 5, 1, 6)).astype(np.float32)
    labels = np.zeros((2, 0), np.int32)
    value = rnnt_log_prob(logits, labels, [5, 3], [0, 0]).numpy()
    blank_lp = ref.log_softmax(logits)[:, :, 0, 0]
    np.testing.assert_allclose(value, [blank_lp[0].sum(), blank_lp[1, :3].sum()], atol=1e-5)


def test_nonzero_blank_id():
    rng = np.random.default_rng(9)
    vocab = 6
    logits, labels, logit_lengths, label_lengths = ref.random_batch(
        rng, 3, 4, 3, vocab, blank=vocab - 1
    )
    value = rnnt_log_prob(logits, labels, logit_lengths, label_lengths, blank=vocab - 1).numpy()
    expected = ref.batch_log_prob(logits, labels, logit_lengths, label_lengths, blank=vocab - 1)
    np.testing.assert_allclose(value, expected, atol=1e-5)


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_low_precision_logits_are_computed_in_float32(dtype):
    rng = np.random.default_rng(10)
    logits, labels, logit_lengths, label_lengths = ref.random_batch(rng, 3, 5, 3, 7)
    low = tf.cast(logits, dtype)
    value, grad = _value_and_grad(rnnt_loss, low, labels, logit_lengths, label_lengths)
    rounded = tf.cast(low, tf.float64).numpy()  # the exact values the loss received
    expected = -ref.batch_log_prob(rounded, labels, logit_lengths, label_lengths)
    assert value.dtype == np.float32
    np.testing.assert_allclose(value, expected, atol=1e-5)
    assert grad.dtype == dtype
    expected_grad = -ref.batch_grad(rounded, labels, logit_lengths, label_lengths)
    np.testing.assert_allclose(tf.cast(grad, tf.float64).numpy(), expected_grad, atol=1e-2)


def test_finite_for_logits_up_to_1e4():
    rng = np.random.default_rng(11)
    logits, labels, logit_lengths, label_lengths = ref.random_batch(rng, 3, 6, 4, 5)
    logits = np.sign(logits) * 1e4
    value, grad = _value_and_grad(rnnt_loss, logits, labels, logit_lengths, label_lengths)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad.numpy()))
    expected = -ref.batch_log_prob(logits.astype(np.float64), labels, logit_lengths, label_lengths)
    # float32 resolves 1e4 to ~1e-3, so log-probs near 1e4 carry that much rounding.
    np.testing.assert_allclose(value, expected, atol=1e-2)


def test_logit_far_above_blank_and_label_takes_the_exact_max_path():
    """The one-pass logsumexp shifts by max(blank, label logit); a logit 100 above that would
    overflow exp, so the kernel must fall back to the max-shifted form and stay exact."""
    rng = np.random.default_rng(16)
    logits, labels, logit_lengths, label_lengths = ref.random_batch(rng, 3, 5, 3, 7)
    logits[1, 0, 0, :] = 0.0
    logits[1, 0, 0, 3 if labels[1, 0] != 3 else 4] = 100.0
    value, grad = _value_and_grad(rnnt_log_prob, logits, labels, logit_lengths, label_lengths)
    logits64 = logits.astype(np.float64)
    expected = ref.batch_log_prob(logits64, labels, logit_lengths, label_lengths)
    np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-4)
    expected_grad = ref.batch_grad(logits64, labels, logit_lengths, label_lengths)
    # float32 resolves 100 to ~1e-5, hence the slightly looser tolerance.
    np.testing.assert_allclose(grad.numpy(), expected_grad, atol=3e-5)


def test_fastemit_scales_label_gradients_and_value():
    rng = np.random.default_rng(12)
    lam = 0.3
    logits, labels, logit_lengths, label_lengths = ref.random_batch(rng, 3, 5, 3, 6)
    value, grad = _value_and_grad(
        rnnt_loss, logits, labels, logit_lengths, label_lengths, fastemit_lambda=lam
    )
    logits64 = logits.astype(np.float64)
    nll = -ref.batch_log_prob(logits64, labels, logit_lengths, label_lengths)
    np.testing.assert_allclose(value, (1 + lam) * nll, rtol=1e-6)
    expected = -ref.batch_grad(logits64, labels, logit_lengths, label_lengths, fastemit_lambda=lam)
    np.testing.assert_allclose(grad.numpy(), expected, atol=1e-5)
    # It differs from the plain gradient, and equals the finite-difference gradient of the FastEmit
    # surrogate -log P - lam * sum_{t,u} sg(gamma_y(t,u)) * log P(y_{u+1}|t,u) of one utterance.
    plain = -ref.batch_grad(logits64, labels, logit_lengths, label_lengths)
    assert np.abs(expected - plain).max() > 1e-3
    z0, y0 = logits64[0], labels[0]
    alpha, beta, log_prob, _ = ref.alpha_beta(z0, y0)
    frozen = np.zeros(alpha.shape)
    for u in range(len(y0)):
        frozen[:, u] = np.exp(
            alpha[:, u] + ref.log_softmax(z0)[:, u, y0[u]] + beta[:, u + 1] - log_prob
        )

    def surrogate(z):
        lp = ref.log_softmax(z)
        label_lp = sum((frozen[:, u] * lp[:, u, y0[u]]).sum() for u in range(len(y0)))
        return -ref.alpha_beta(z, y0)[2] - lam * label_lp

    np.testing.assert_allclose(grad.numpy()[0], ref.numeric_grad(surrogate, z0), atol=2e-5)


def test_compiles_inside_a_jit_compiled_function():
    rng = np.random.default_rng(13)
    logits, labels, logit_lengths, label_lengths = ref.random_batch(rng, 4, 6, 4, 7)

    @tf.function(jit_compile=True)
    def step(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = rnnt_loss(z, labels, logit_lengths, label_lengths, fastemit_lambda=0.1)
        return loss, tape.gradient(loss, z)

    value, grad = step(tf.constant(logits))
    eager_value, eager_grad = _value_and_grad(
        rnnt_loss, logits, labels, logit_lengths, label_lengths, fastemit_lambda=0.1
    )
    np.testing.assert_allclose(value.numpy(), eager_value, rtol=1e-6)
    np.testing.assert_allclose(grad.numpy(), eager_grad.numpy(), atol=1e-6)


def test_invalid_utterance_gives_nan_not_a_number_when_asserts_are_compiled_away():
    rng = np.random.default_rng(14)
    logits, labels, logit_lengths, label_lengths = ref.random_batch(rng, 2, 4, 3, 5)
    logit_lengths[1] = 0

    @tf.function(jit_compile=True)
    def compiled(z, t_b):
        return rnnt_loss(z, labels, t_b, label_lengths)

    value = compiled(tf.constant(logits), tf.constant(logit_lengths)).numpy()
    assert np.isfinite(value[0]) and np.isnan(value[1])


_INVALID_CASES = {
    "zero frames": (dict(logit_lengths=[0, 4]), "logit_lengths must be >= 1"),
    "too many frames": (dict(logit_lengths=[5, 4]), "logit_lengths must be <= the number of"),
    "too many labels": (dict(label_lengths=[4, 1]), "label_lengths must be <= labels.shape[1]"),
    "negative labels count": (dict(label_lengths=[-1, 1]), "label_lengths must be >= 0"),
    "label id too large": (dict(labels=[[1, 2, 5], [1, -1, -1]]), "label ids must be in [0, V)"),
    "negative label id": (dict(labels=[[1, -2, 3], [1, -1, -1]]), "label ids must be in [0, V)"),
    "blank as label": (
        dict(labels=[[1, 0, 3], [1, -1, -1]]),
        "labels must not contain the blank id",
    ),
    "U mismatch": (
        dict(labels=[[1, 2], [1, 2]], label_lengths=[2, 1]),
        "logits.shape[2] (U+1) must equal labels.shape[1] + 1",
    ),
}


@pytest.mark.parametrize("mode", ["eager", "tf.function"])
@pytest.mark.parametrize("case", sorted(_INVALID_CASES))
def test_invalid_inputs_raise_a_clear_error(case, mode):
    overrides, message = _INVALID_CASES[case]
    args = dict(
        logits=np.zeros((2, 4, 4, 5), np.float32),
        labels=[[1, 2, 3], [1, -1, -1]],
        logit_lengths=[4, 4],
        label_lengths=[3, 1],
    )
    args.update(overrides)
    args = {k: tf.constant(v) for k, v in args.items()}
    fn = rnnt_loss if mode == "eager" else tf.function(rnnt_loss)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(f"rnnt_loss: {message}")):
        fn(**args)


def _full_size_values(hlo, shape):
    """Instructions of the entry computation, other than parameters, that produce `shape`."""
    full = "f32[" + ",".join(map(str, shape)) + "]"
    entry = hlo[hlo.index("\nENTRY") :].splitlines()[1:]
    return [line for line in entry if f"= {full}" in line and "parameter(" not in line]


def test_compiled_kernels_create_no_full_size_tensor_but_the_gradient():
    """Optimized HLO: the forward kernel creates nothing of size [B, T, U+1, V] (no exp or
    log-softmax copy, no one-hot); the backward kernel creates exactly one such value, the fused
    gradient."""
    from tfkd.losses import rnnt

    rng = np.random.default_rng(15)
    logits, labels, logit_lengths, label_lengths = ref.random_batch(rng, 2, 5, 3, 64)
    args = [tf.constant(x) for x in (logits, labels, logit_lengths, label_lengths)]
    log_prob, residuals = rnnt._forward_kernel(*args, blank=0, factors=(2, 32))
    hlo_fwd = rnnt._forward_kernel.experimental_get_compiler_ir(*args, blank=0, factors=(2, 32))(
        stage="optimized_hlo"
    )
    hlo_bwd = rnnt._backward_kernel.experimental_get_compiler_ir(
        *args, log_prob, residuals, tf.ones([2]), tf.constant(1.0), blank=0
    )(stage="optimized_hlo")
    assert _full_size_values(hlo_fwd, logits.shape) == []
    (grad,) = _full_size_values(hlo_bwd, logits.shape)
    assert "ROOT" in grad and "fusion(" in grad


_STRATEGY_SCRIPT = """
import keras
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfkd.losses import rnnt_loss, rnnt_loss_from_joint  # noqa: E402


class Joint(keras.layers.Layer):
    def __init__(self):
        super().__init__()
        self.enc_proj, self.out = keras.layers.Dense(4), keras.layers.Dense(6)

    def call(self, enc, pred):
        return self.out(tf.tanh(self.enc_proj(enc)[:, :, None] + pred[:, None]))


strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
rng = np.random.default_rng(0)
enc = tf.constant(rng.normal(size=(4, 5, 3)), tf.float32)
pred = tf.constant(rng.normal(size=(4, 3, 4)), tf.float32)
labels = tf.constant([[1, 2], [3, 4], [5, -1], [1, 1]], tf.int32)
t_len, u_len = tf.constant([5, 4, 3, 5]), tf.constant([2, 2, 1, 2])
with strategy.scope():
    joint = Joint()
    joint(enc[:1], pred[:1])


def loss_and_grads(idx, chunked):
    e, p = tf.gather(enc, idx), tf.gather(pred, idx)
    y, t, u = tf.gather(labels, idx), tf.gather(t_len, idx), tf.gather(u_len, idx)
    with tf.GradientTape() as tape:
        tape.watch([e, p])
        if chunked:
            loss = rnnt_loss_from_joint(e, p, joint, y, t, u, time_chunk=2)
        else:
            loss = rnnt_loss(joint(e, p), y, t, u)
        total = tf.reduce_sum(loss)
    return loss, tape.gradient(total, [e, p, *joint.trainable_variables])


def replica_fn(chunked):
    i = tf.distribute.get_replica_context().replica_id_in_sync_group
    return loss_and_grads(tf.range(2) + 2 * i, chunked)


for chunked in (False, True):
    run = tf.function(lambda chunked=chunked: strategy.run(replica_fn, args=(chunked,)))
    loss, grads = run()
    losses = strategy.experimental_local_results(loss)
    for replica, idx in enumerate(([0, 1], [2, 3])):
        want_loss, want_grads = loss_and_grads(tf.constant(idx), chunked=False)
        np.testing.assert_allclose(losses[replica].numpy(), want_loss.numpy(), rtol=1e-6)
        for got, want in zip(grads, want_grads, strict=True):
            got = strategy.experimental_local_results(got)[replica]
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
print("OK")
"""


def test_runs_in_mirrored_strategy_replica_context():
    """Two logical CPU devices must be configured before any op runs: a fresh process."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, "-c", _STRATEGY_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-3000:]
