"""tfkd.losses.ctc_loss against brute-force enumeration: values, gradients, padding, infeasible
rows, input checks, low precision and XLA."""

import itertools
import re

import numpy as np
import pytest
import tensorflow as tf

from tfkd.losses import ctc_feasible, ctc_loss

V = 4


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def brute_force_log_prob(logits, labels, blank=0):
    """`log P_CTC(labels | logits [T, V])`: logsumexp over every length-T path whose collapse
    (merge repeats, then drop blanks) is `labels`; -inf if none. float64."""
    lp = log_softmax(np.asarray(logits, np.float64))
    frames, vocab = lp.shape
    matching = []
    for path in itertools.product(range(vocab), repeat=frames):
        merged = [k for i, k in enumerate(path) if i == 0 or k != path[i - 1]]
        if [k for k in merged if k != blank] == list(labels):
            matching.append(sum(lp[t, k] for t, k in enumerate(path)))
    if not matching:
        return -np.inf
    m = max(matching)
    return m + np.log(np.sum(np.exp(np.array(matching) - m)))


def brute_force_loss(logits, labels, logit_lengths, label_lengths, blank=0):
    """`[B]` float64: −log P_CTC per row, 0 where no path exists (the loss's convention)."""
    out = []
    for b, (t, u) in enumerate(zip(logit_lengths, label_lengths, strict=True)):
        log_prob = brute_force_log_prob(logits[b, :t], labels[b, :u], blank)
        out.append(-log_prob if np.isfinite(log_prob) else 0.0)
    return np.array(out)


def value_and_grad(logits, labels, logit_lengths, label_lengths, blank=0):
    logits = tf.convert_to_tensor(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        value = ctc_loss(logits, labels, logit_lengths, label_lengths, blank=blank)
    return value.numpy(), tape.gradient(value, logits).numpy()


def padded_batch(rng, max_frames=5, max_labels=3):
    """Every (T_b, U_b) with 1 <= T_b <= 5, 0 <= U_b <= 3, labels with repeats, garbage padding.

    Some rows are infeasible (U_b + repeats > T_b)."""
    pairs = [(t, u) for t in range(1, max_frames + 1) for u in range(max_labels + 1)]
    logits = rng.normal(size=(len(pairs), max_frames, V)).astype(np.float32) * 2.0
    labels = rng.integers(1, V, size=(len(pairs), max_labels)).astype(np.int32)
    labels[::3, 1] = labels[::3, 0]  # adjacent repeats, which need a blank between them
    for b, (_, u) in enumerate(pairs):
        labels[b, u:] = [-7, 99, 0][: max_labels - u]  # padding may be anything
    lengths = np.array(pairs, np.int32)
    return logits, labels, lengths[:, 0], lengths[:, 1]


def test_equals_brute_force_enumeration_on_a_padded_batch_with_infeasible_rows():
    logits, labels, logit_lengths, label_lengths = padded_batch(np.random.default_rng(0))
    value, _ = value_and_grad(logits, labels, logit_lengths, label_lengths)
    expected = brute_force_loss(logits, labels, logit_lengths, label_lengths)
    assert value.dtype == np.float32 and value.shape == (len(expected),)
    np.testing.assert_allclose(value, expected, rtol=0, atol=1e-5)
    # ctc_feasible says exactly where some path exists.
    reachable = [
        np.isfinite(brute_force_log_prob(logits[b, :t], labels[b, :u]))
        for b, (t, u) in enumerate(zip(logit_lengths, label_lengths, strict=True))
    ]
    feasible = ctc_feasible(labels, logit_lengths, label_lengths).numpy()
    np.testing.assert_array_equal(feasible, reachable)
    assert 0 < feasible.sum() < len(feasible)
    assert np.all(value[feasible] > 0) and np.all(value[~feasible] == 0.0)


def test_padding_changes_nothing_and_gets_exactly_zero_gradient():
    rng = np.random.default_rng(1)
    logits, labels, logit_lengths, label_lengths = padded_batch(rng)
    clean_value, clean_grad = value_and_grad(logits, labels, logit_lengths, label_lengths)
    other = logits.copy()
    other_labels = labels.copy()
    for b, (t, u) in enumerate(zip(logit_lengths, label_lengths, strict=True)):
        other[b, t:] = rng.choice([np.nan, 1e30, -50.0, 7.0], size=other[b, t:].shape)
        other_labels[b, u:] = rng.integers(-5, 50, size=len(labels[b]) - u)
    value, grad = value_and_grad(other, other_labels, logit_lengths, label_lengths)
    np.testing.assert_array_equal(value, clean_value)
    np.testing.assert_array_equal(grad, clean_grad)
    feasible = ctc_feasible(labels, logit_lengths, label_lengths).numpy()
    for b, t in enumerate(logit_lengths):
        assert np.all(grad[b, t:] == 0.0)
        assert np.any(grad[b, :t] != 0.0) == feasible[b]


def test_gradient_matches_finite_differences_of_the_brute_force_loss():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 4, 3)).astype(np.float32)
    labels = np.array([[1, 2], [2, 2], [1, 0]], np.int32)
    logit_lengths, label_lengths = np.array([4, 4, 3]), np.array([2, 2, 1])
    _, grad = value_and_grad(logits, labels, logit_lengths, label_lengths)
    z = logits.astype(np.float64)
    numeric = np.zeros_like(z)
    eps = 1e-5
    for idx in np.ndindex(*z.shape):
        up, down = z.copy(), z.copy()
        up[idx] += eps
        down[idx] -= eps
        diff = brute_force_loss(up, labels, logit_lengths, label_lengths) - brute_force_loss(
            down, labels, logit_lengths, label_lengths
        )
        numeric[idx] = diff.sum() / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=0, atol=2e-5)
    assert np.abs(numeric).max() > 0.1


def test_infeasible_rows_give_zero_and_zero_gradient_not_nan():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 3, V)).astype(np.float32)
    # Row 0: 3 labels in 2 frames; row 1: "1 1" needs 3 frames; row 2: the same, feasible.
    labels = np.array([[1, 2, 3], [1, 1, 0], [1, 1, 0]], np.int32)
    logit_lengths, label_lengths = np.array([2, 2, 3]), np.array([3, 2, 2])
    value, grad = value_and_grad(logits, labels, logit_lengths, label_lengths)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    np.testing.assert_array_equal(value[:2], [0.0, 0.0])
    np.testing.assert_array_equal(grad[:2], 0.0)
    np.testing.assert_array_equal(
        ctc_feasible(labels, logit_lengths, label_lengths).numpy(), [False, False, True]
    )
    # The feasible row has one path: blank-separated "1 _ 1".
    lp = log_softmax(logits[2].astype(np.float64))
    np.testing.assert_allclose(value[2], -(lp[0, 1] + lp[1, 0] + lp[2, 1]), atol=1e-5)


def test_empty_labels_and_empty_utterances_are_legal():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 4, V)).astype(np.float32)
    labels = np.array([[2], [2], [2]], np.int32)
    value = ctc_loss(logits, labels, [4, 0, 0], [0, 0, 1]).numpy()
    blank = log_softmax(logits.astype(np.float64))[0, :, 0]
    np.testing.assert_allclose(value, [-blank.sum(), 0.0, 0.0], atol=1e-5)


def test_nonzero_blank_id():
    rng = np.random.default_rng(5)
    blank = V - 1
    logits = rng.normal(size=(3, 4, V)).astype(np.float32)
    labels = np.array([[0, 2], [1, 1], [2, 0]], np.int32)
    logit_lengths, label_lengths = np.array([4, 3, 2]), np.array([2, 2, 1])
    value = ctc_loss(logits, labels, logit_lengths, label_lengths, blank=blank).numpy()
    expected = brute_force_loss(logits, labels, logit_lengths, label_lengths, blank=blank)
    np.testing.assert_allclose(value, expected, atol=1e-5)
    assert np.all(expected > 0)


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_low_precision_logits_are_computed_in_float32(dtype):
    logits, labels, logit_lengths, label_lengths = padded_batch(np.random.default_rng(6))
    low = tf.cast(logits, dtype)
    value, grad = value_and_grad(low, labels, logit_lengths, label_lengths)
    rounded = tf.cast(low, tf.float64).numpy()  # the exact values the loss received
    assert value.dtype == np.float32 and grad.dtype == dtype.as_numpy_dtype
    expected = brute_force_loss(rounded, labels, logit_lengths, label_lengths)
    np.testing.assert_allclose(value, expected, atol=1e-5)


def test_compiles_inside_a_jit_compiled_function():
    logits, labels, logit_lengths, label_lengths = padded_batch(np.random.default_rng(7))

    @tf.function(jit_compile=True)
    def step(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = ctc_loss(z, labels, logit_lengths, label_lengths)
        return loss, tape.gradient(loss, z)

    value, grad = step(tf.constant(logits))
    eager_value, eager_grad = value_and_grad(logits, labels, logit_lengths, label_lengths)
    np.testing.assert_allclose(value.numpy(), eager_value, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad.numpy(), eager_grad, atol=1e-6)
    np.testing.assert_array_equal(grad.numpy()[eager_value == 0], 0.0)


def test_invalid_utterance_gives_nan_when_asserts_are_compiled_away():
    logits = np.random.default_rng(8).normal(size=(2, 4, V)).astype(np.float32)

    @tf.function(jit_compile=True)
    def compiled(z, labels):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = ctc_loss(z, labels, [4, 4], [2, 2])
        return loss, tape.gradient(loss, z)

    value, grad = compiled(tf.constant(logits), tf.constant([[1, 2], [1, 0]]))
    assert np.isfinite(value[0]) and np.isnan(value[1])
    assert np.all(np.isfinite(grad)) and np.all(grad.numpy()[1] == 0.0)


_INVALID_CASES = {
    "negative frames": (dict(logit_lengths=[-1, 4]), "logit_lengths must be >= 0"),
    "too many frames": (dict(logit_lengths=[5, 4]), "logit_lengths must be <= the number of"),
    "too many labels": (dict(label_lengths=[4, 1]), "label_lengths must be <= labels.shape[1]"),
    "negative labels count": (dict(label_lengths=[-1, 1]), "label_lengths must be >= 0"),
    "label id too large": (dict(labels=[[1, 2, 4], [1, -1, -1]]), "label ids must be in [0, V)"),
    "negative label id": (dict(labels=[[1, -2, 3], [1, -1, -1]]), "label ids must be in [0, V)"),
    "blank as label": (
        dict(labels=[[1, 0, 3], [1, -1, -1]]),
        "labels must not contain the blank id",
    ),
    "batch mismatch": (
        dict(logit_lengths=[4, 4, 4]),
        "logit_lengths must have one entry per utterance",
    ),
}


@pytest.mark.parametrize("mode", ["eager", "tf.function"])
@pytest.mark.parametrize("case", sorted(_INVALID_CASES))
def test_invalid_inputs_raise_a_clear_error(case, mode):
    overrides, message = _INVALID_CASES[case]
    args = dict(
        logits=np.zeros((2, 4, V), np.float32),
        labels=[[1, 2, 3], [1, -1, -1]],
        logit_lengths=[4, 4],
        label_lengths=[3, 1],
    )
    args.update(overrides)
    args = {k: tf.constant(v) for k, v in args.items()}
    fn = ctc_loss if mode == "eager" else tf.function(ctc_loss)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(f"ctc_loss: {message}")):
        fn(**args)


def test_bad_argument_types_raise():
    with pytest.raises(ValueError, match="blank must be a non-negative Python int"):
        ctc_loss(np.zeros((1, 2, V), np.float32), [[1]], [2], [1], blank=-1)
    with pytest.raises(TypeError, match="logits must be floating point"):
        ctc_loss(np.zeros((1, 2, V), np.int32), [[1]], [2], [1])
    with pytest.raises(TypeError, match="label_lengths must be integers"):
        ctc_loss(np.zeros((1, 2, V), np.float32), [[1]], [2], [1.0])


def test_plain_graphs_at_several_shapes_equal_eager():
    """TF's CTC loops are `Defun`s named without their shapes: after a graph at another label
    width, grappler logs a shape conflict and skips optimising; the values must not change."""
    rng = np.random.default_rng(9)

    @tf.function
    def plain(z, y, logit_lengths, label_lengths):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = ctc_loss(z, y, logit_lengths, label_lengths)
        return loss, tape.gradient(loss, z)

    for width in (1, 2, 3, 1):
        logits = rng.normal(size=(3, 5, V)).astype(np.float32)
        labels = rng.integers(1, V, size=(3, width)).astype(np.int32)
        lengths = np.array([5, 4, 3]), np.array([width, width - 1, 1])
        value, grad = plain(tf.constant(logits), tf.constant(labels), *lengths)
        eager_value, eager_grad = value_and_grad(logits, labels, *lengths)
        np.testing.assert_allclose(value.numpy(), eager_value, rtol=1e-6)
        np.testing.assert_allclose(grad.numpy(), eager_grad, atol=1e-6)
        expected = brute_force_loss(logits, labels, *lengths)
        np.testing.assert_allclose(value.numpy(), expected, atol=1e-5)
