"""NumPy-reference tests for tfkd.losses' distillation losses (METHODS.md §2–§5)."""

import numpy as np
import pytest
import rnnt_reference as ref
import tensorflow as tf

from tfkd.losses import (
    collapsed_lattice,
    collapsed_soft_distillation_loss,
    discriminative_fullsum_loss,
    fullsum_distillation_loss,
    hard_distillation_loss,
    soft_distillation_loss,
)

# ----------------------------------------------------------------------------------------------
# NumPy references (float64, loops over nodes: independent of the vectorised TF code).


def _logsumexp(x):
    if x.size == 0:
        return -np.inf
    m = x.max()
    return m + np.log(np.exp(x - m).sum())


def soft_kl_reference(
    teacher, student, labels, logit_lengths, label_lengths, shift=0, blank=0, full_vocabulary=False
):
    """`[B]` collapsed (or full-vocabulary) lattice KL, node by node, in float64 log space."""
    lp_t, lp_s = ref.log_softmax(teacher), ref.log_softmax(student)
    vocab = teacher.shape[-1]
    out = np.zeros(len(teacher))
    for b in range(len(teacher)):
        for t in range(shift, int(logit_lengths[b])):
            for u in range(int(label_lengths[b]) + 1):
                node_t, node_s = lp_t[b, t - shift, u], lp_s[b, t, u]
                if not full_vocabulary:
                    named = [blank] if u == label_lengths[b] else [labels[b, u], blank]
                    groups = [[k] for k in named] + [[k for k in range(vocab) if k not in named]]
                    node_t = np.array([_logsumexp(node_t[g]) for g in groups])
                    node_s = np.array([_logsumexp(node_s[g]) for g in groups])
                keep = node_t > -np.inf  # 0 · log 0 = 0 (an empty rest class)
                out[b] += np.sum(np.exp(node_t[keep]) * (node_t[keep] - node_s[keep]))
    return out


def fullsum_reference(s_t, s_s, lengths, valid, distance, length_norm, renormalize=False):
    out = np.zeros(len(s_t))
    for b in range(len(s_t)):
        idx = np.flatnonzero(valid[b])
        if idx.size == 0:
            continue
        t, s = s_t[b, idx].astype(np.float64), s_s[b, idx].astype(np.float64)
        if length_norm:
            t, s = t / (lengths[b, idx] + 1), s / (lengths[b, idx] + 1)
        if distance == "squared":
            out[b] = np.mean((t - s) ** 2)
        else:
            w = np.exp(log_softmax(t)) if renormalize else np.exp(t)
            out[b] = -np.sum(w * s)
    return out


def log_softmax(x):
    return x - _logsumexp(x)


def disc_reference(s_t, s_s, valid, tau):
    """`[B]` loss and `[B, N]` expected gradient (q_S − q_T)/τ (0 at padding)."""
    loss, grad = np.zeros(len(s_t)), np.zeros(s_t.shape)
    for b in range(len(s_t)):
        idx = np.flatnonzero(valid[b])
        log_q_t = log_softmax(s_t[b, idx].astype(np.float64) / tau)
        log_q_s = log_softmax(s_s[b, idx].astype(np.float64) / tau)
        loss[b] = np.sum(np.exp(log_q_t) * (log_q_t - log_q_s))
        grad[b, idx] = (np.exp(log_q_s) - np.exp(log_q_t)) / tau
    return loss, grad


def _soft_value_and_grad(teacher, student, *args, **kwargs):
    student = tf.convert_to_tensor(student)
    with tf.GradientTape() as tape:
        tape.watch(student)
        loss = soft_distillation_loss(teacher, student, *args, **kwargs)
    return loss.numpy(), tape.gradient(loss, student).numpy()


def _scores_value_and_grad(fn, teacher, student, *args, **kwargs):
    student = tf.convert_to_tensor(student)
    with tf.GradientTape() as tape:
        tape.watch(student)
        loss = fn(teacher, student, *args, **kwargs)
    return loss.numpy(), tape.gradient(loss, student).numpy()


def _lattices(seed, batch=3, frames=6, labels=3, vocab=6):
    rng = np.random.default_rng(seed)
    student, lab, t_len, u_len = ref.random_batch(rng, batch, frames, labels, vocab)
    teacher = (rng.normal(size=student.shape) * 2.0).astype(np.float32)
    return teacher, student, lab, t_len, u_len


# ----------------------------------------------------------------------------------------------
# §2 hard


def test_hard_is_rnnt_loss_on_teacher_1best():
    _, student, hyp, t_len, u_len = _lattices(0)
    got = hard_distillation_loss(student, hyp, t_len, u_len).numpy()
    want = -ref.batch_log_prob(student, hyp, t_len, u_len)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# §3 soft


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("full_vocabulary", [False, True])
def test_soft_matches_numpy(shift, full_vocabulary):
    teacher, student, lab, t_len, u_len = _lattices(1)
    got = soft_distillation_loss(
        teacher, student, lab, t_len, u_len, shift=shift, full_vocabulary=full_vocabulary
    ).numpy()
    want = soft_kl_reference(teacher, student, lab, t_len, u_len, shift, 0, full_vocabulary)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.all(want[0] > 0.1)  # the full-length utterance really has non-trivial terms


def test_soft_gradient_matches_finite_differences():
    teacher, student, lab, t_len, u_len = _lattices(2, batch=2, frames=3, labels=2, vocab=4)
    _, grad = _soft_value_and_grad(teacher, student, lab, t_len, u_len, shift=1)
    numeric = ref.numeric_grad(
        lambda s: soft_kl_reference(teacher, s, lab, t_len, u_len, shift=1).sum(), student
    )
    np.testing.assert_allclose(grad, numeric, atol=2e-5)
    # Masked nodes: frame 0 (t < shift), frames >= T_b, u > U_b get no gradient.
    assert np.all(grad[:, 0] == 0)
    for b in range(2):
        assert np.all(grad[b, t_len[b] :] == 0) and np.all(grad[b, :, u_len[b] + 1 :] == 0)


def test_soft_last_label_node_has_only_blank_and_rest():
    # U = 0: one node per frame, classes {blank, rest}; the label-0 logit is irrelevant padding.
    teacher = np.log(np.array([[[[0.5, 0.3, 0.2]]]], np.float32))  # [1, 1, 1, 3]
    student = np.log(np.array([[[[0.25, 0.25, 0.5]]]], np.float32))
    got = soft_distillation_loss(teacher, student, np.zeros([1, 0], np.int32), [1], [0]).numpy()
    want = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
    np.testing.assert_allclose(got, [want], rtol=1e-6)


@pytest.mark.parametrize("full_vocabulary", [False, True])
def test_soft_teacher_equals_student_gives_zero_loss_and_gradient(full_vocabulary):
    _, student, lab, t_len, u_len = _lattices(3)
    loss, grad = _soft_value_and_grad(
        student, student, lab, t_len, u_len, full_vocabulary=full_vocabulary
    )
    np.testing.assert_allclose(loss, 0.0, atol=1e-5)
    np.testing.assert_allclose(grad, 0.0, atol=1e-6)


def test_soft_no_gradient_reaches_teacher():
    teacher, student, lab, t_len, u_len = _lattices(4)
    teacher = tf.convert_to_tensor(teacher)
    with tf.GradientTape() as tape:
        tape.watch(teacher)
        loss = soft_distillation_loss(teacher, student, lab, t_len, u_len)
    assert tape.gradient(loss, teacher) is None


def test_soft_finite_when_label_and_blank_take_all_mass():
    teacher, student, lab, t_len, u_len = _lattices(5)
    teacher[..., 0] = 1e4  # P_T(blank) = 1 exactly in float32: rest has probability 0
    student[..., 0] = 60.0
    student[0, 0, 0, 1] = 1e4
    loss, grad = _soft_value_and_grad(teacher, student, lab, t_len, u_len)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    want = soft_kl_reference(teacher, student, lab, t_len, u_len)
    np.testing.assert_allclose(loss, want, rtol=1e-4)


def test_soft_two_class_vocabulary_has_empty_rest():
    rng = np.random.default_rng(6)
    teacher, student = rng.normal(size=(2, 1, 3, 2, 2)).astype(np.float32)
    lab = np.ones([1, 1], np.int32)
    loss, grad = _soft_value_and_grad(teacher, student, lab, [3], [1])
    want = soft_kl_reference(teacher, student, lab, [3], [1])
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert np.all(np.isfinite(grad))


def test_soft_static_frame_mismatch_is_a_clear_error():
    teacher, student, lab, t_len, u_len = _lattices(7)
    with pytest.raises(ValueError, match="frame counts differ.*Full-sum distillation"):
        soft_distillation_loss(teacher[:, :4], student, lab, t_len, u_len)


def test_soft_dynamic_frame_mismatch_is_a_clear_error():
    teacher, student, lab, t_len, u_len = _lattices(8)
    lattice = tf.TensorSpec([None, None, None, None], tf.float32)
    fn = tf.function(
        lambda t, s: soft_distillation_loss(t, s, lab, t_len, u_len),
        input_signature=[lattice, lattice],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="frame counts differ.*Full-sum"):
        fn(teacher[:, :5], student)
    with pytest.raises(tf.errors.InvalidArgumentError, match="frame counts differ.*Full-sum"):
        soft_distillation_loss(teacher, student, lab, t_len, u_len, teacher_logit_lengths=t_len + 1)
    np.testing.assert_allclose(  # the same graph accepts equal frame counts
        fn(teacher, student).numpy(),
        soft_kl_reference(teacher, student, lab, t_len, u_len),
        rtol=1e-5,
    )


def test_soft_rejects_negative_shift():
    teacher, student, lab, t_len, u_len = _lattices(9)
    with pytest.raises(ValueError, match="shift"):
        soft_distillation_loss(teacher, student, lab, t_len, u_len, shift=-1)


def collapsed_lattice_reference(logits, labels, label_lengths, blank=0):
    """`[B, T, U+1, 3]` float64 {next label, blank, rest} log-probs, node by node.

    At u = U_b (and padded nodes u > U_b) the label class is log 0 = -inf and rest is every
    non-blank class.
    """
    lp = ref.log_softmax(logits)
    batch, frames, nodes, vocab = logits.shape
    out = np.full([batch, frames, nodes, 3], -np.inf)
    for b in range(batch):
        for t in range(frames):
            for u in range(nodes):
                label = int(labels[b, u]) if u < label_lengths[b] else None
                rest = [k for k in range(vocab) if k not in (label, blank)]
                if label is not None:
                    out[b, t, u, 0] = lp[b, t, u, label]
                out[b, t, u, 1] = lp[b, t, u, blank]
                out[b, t, u, 2] = _logsumexp(lp[b, t, u, rest])
    return out


def test_collapsed_lattice_matches_numpy():
    teacher, _, lab, t_len, u_len = _lattices(10, vocab=5)
    got = collapsed_lattice(teacher, np.maximum(lab, 0), u_len).numpy()
    want = collapsed_lattice_reference(teacher, np.maximum(lab, 0), u_len)
    assert got.shape == teacher.shape[:3] + (3,) and got.dtype == np.float32
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-5)
    # log 0 is stored as the finite stand-in -1e30 (no label after the last one).
    assert np.all(got[~finite] <= -1e29)
    for b in range(len(u_len)):
        assert np.all(got[b, :, u_len[b], 0] <= -1e29)
        np.testing.assert_allclose(np.exp(got[b, :, : u_len[b] + 1]).sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("shift", [0, 2])
def test_collapsed_soft_equals_online_soft_value_and_gradient(shift):
    teacher, student, lab, t_len, u_len = _lattices(11)
    targets = collapsed_lattice(teacher, np.maximum(lab, 0), u_len)
    online = _soft_value_and_grad(teacher, student, lab, t_len, u_len, shift=shift)
    offline = _scores_value_and_grad(
        collapsed_soft_distillation_loss, targets, student, lab, t_len, u_len, shift=shift
    )
    np.testing.assert_allclose(offline[0], online[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(offline[1], online[1], rtol=1e-6, atol=1e-7)
    want = soft_kl_reference(teacher, student, lab, t_len, u_len, shift)
    np.testing.assert_allclose(offline[0], want, rtol=1e-5, atol=1e-5)
    # Padded nodes may hold anything finite (the pipeline pads with 0): same loss.
    padded = targets.numpy()
    for b in range(len(u_len)):
        padded[b, t_len[b] :] = 0.0
        padded[b, :, u_len[b] + 1 :] = 0.0
    again = collapsed_soft_distillation_loss(padded, student, lab, t_len, u_len, shift=shift)
    np.testing.assert_allclose(again.numpy(), offline[0], rtol=1e-6)


def test_collapsed_soft_errors_are_clear():
    teacher, student, lab, t_len, u_len = _lattices(12)
    targets = collapsed_lattice(teacher, np.maximum(lab, 0), u_len)
    with pytest.raises(ValueError, match="full_vocabulary=True needs the teacher's logits"):
        collapsed_soft_distillation_loss(targets, student, lab, t_len, u_len, full_vocabulary=True)
    with pytest.raises(ValueError, match="frame counts differ.*Full-sum distillation"):
        collapsed_soft_distillation_loss(targets[:, :4], student, lab, t_len, u_len)
    with pytest.raises(ValueError, match="3 classes"):
        collapsed_soft_distillation_loss(teacher, student, lab, t_len, u_len)
    with pytest.raises(ValueError, match="shift"):
        collapsed_soft_distillation_loss(targets, student, lab, t_len, u_len, shift=-1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="frame counts differ"):
        collapsed_soft_distillation_loss(
            targets, student, lab, t_len, u_len, teacher_logit_lengths=t_len + 1
        )


# ----------------------------------------------------------------------------------------------
# §4 full-sum


def _nbest(seed, batch=4, n=5, scale=20.0):
    rng = np.random.default_rng(seed)
    s_t = (-rng.random((batch, n)) * scale).astype(np.float32)
    s_s = (-rng.random((batch, n)) * scale).astype(np.float32)
    lengths = rng.integers(0, 8, size=(batch, n)).astype(np.int32)
    num_hyps = np.array([n, 2, 1, 3][:batch], np.int32)
    valid = np.arange(n)[None, :] < num_hyps[:, None]
    s_t[~valid] = -np.inf  # padding slots as the beam search leaves them
    s_s[~valid] = np.nan
    return s_t, s_s, lengths, num_hyps, valid


@pytest.mark.parametrize("distance", ["squared", "kl"])
@pytest.mark.parametrize("length_norm", [False, True])
def test_fullsum_matches_numpy_with_padding(distance, length_norm):
    s_t, s_s, lengths, num_hyps, valid = _nbest(10, scale=3.0)
    loss, grad = _scores_value_and_grad(
        fullsum_distillation_loss,
        s_t,
        s_s,
        lengths,
        num_hyps,
        distance=distance,
        length_norm=length_norm,
    )
    want = fullsum_reference(s_t, s_s, lengths, valid, distance, length_norm)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    numeric = np.zeros_like(grad)
    for b, n in zip(*np.nonzero(valid), strict=True):

        def f(x, b=b, n=n):
            s = s_s.astype(np.float64).copy()
            s[b, n] = x
            return fullsum_reference(s_t, s, lengths, valid, distance, length_norm)[b]

        numeric[b, n] = (f(s_s[b, n] + 1e-4) - f(s_s[b, n] - 1e-4)) / 2e-4
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-5)
    assert np.all(grad[~valid] == 0)


def test_fullsum_squared_gradient_is_explicit():
    s_t = np.array([[-1.0, -4.0, -9.0]], np.float32)
    s_s = np.array([[-2.0, -2.0, -50.0]], np.float32)
    loss, grad = _scores_value_and_grad(
        fullsum_distillation_loss, s_t, s_s, np.zeros([1, 3], np.int32), [2]
    )
    np.testing.assert_allclose(loss, [(1.0 + 4.0) / 2])
    np.testing.assert_allclose(grad, [[-1.0, 2.0, 0.0]])  # -2 (s_T - s_S) / 2


def test_fullsum_kl_renormalized_and_mask():
    s_t, s_s, lengths, num_hyps, valid = _nbest(11)
    mask = valid.copy()
    mask[0, 1] = False
    got = fullsum_distillation_loss(
        s_t, s_s, lengths, num_hyps, distance="kl", mask=mask, renormalize=True
    ).numpy()
    want = fullsum_reference(s_t, s_s, lengths, mask, "kl", False, renormalize=True)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_fullsum_rejects_unknown_distance():
    with pytest.raises(ValueError, match="distance"):
        fullsum_distillation_loss([[0.0]], [[0.0]], [[1]], distance="l1")


# ----------------------------------------------------------------------------------------------
# §5 discriminative


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_discriminative_matches_numpy_and_gradient(tau):
    s_t, s_s, _, num_hyps, valid = _nbest(12)
    loss, grad = _scores_value_and_grad(
        discriminative_fullsum_loss, s_t, s_s, num_hyps, temperature=tau
    )
    want, want_grad = disc_reference(s_t, s_s, valid, tau)
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, want_grad, atol=1e-6)
    assert loss[0] > 0.01 and loss[2] == 0.0  # utterance 2 has a single hypothesis


def test_discriminative_needs_two_hypotheses():
    with pytest.raises(ValueError, match="N >= 2"):
        discriminative_fullsum_loss([[-1.0]], [[-2.0]])
    fn = tf.function(discriminative_fullsum_loss, input_signature=[tf.TensorSpec([None, None])] * 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="N >= 2"):
        fn(tf.constant([[-1.0]]), tf.constant([[-2.0]]))
    with pytest.raises(ValueError, match="temperature"):
        discriminative_fullsum_loss([[-1.0, -2.0]], [[-2.0, -1.0]], temperature=0.0)


def test_sequence_losses_finite_for_extreme_scores():
    s_t = np.array([[-1e4, -1.0, -3e4], [-2.0, -1e4, -5.0]], np.float32)
    s_s = np.array([[-1.0, -1e4, -2.0], [-1e4, -3.0, -1e4]], np.float32)
    for fn, kwargs in [
        (discriminative_fullsum_loss, {"temperature": 0.5}),
        (fullsum_distillation_loss, {"hyp_lengths": np.ones([2, 3], np.int32)}),
        (
            fullsum_distillation_loss,
            {"hyp_lengths": np.ones([2, 3], np.int32), "distance": "kl", "renormalize": True},
        ),
    ]:
        loss, grad = _scores_value_and_grad(fn, s_t, s_s, **kwargs)
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad)), fn.__name__
    loss, grad = _scores_value_and_grad(discriminative_fullsum_loss, s_t, s_s)
    want, want_grad = disc_reference(s_t, s_s, np.ones([2, 3], bool), 1.0)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, atol=1e-6)
