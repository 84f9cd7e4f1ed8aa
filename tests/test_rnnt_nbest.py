"""tfkd.losses.rnnt_nbest: N-best full-sum scores on shared prefix rows.

References: every hypothesis's own lattice, built from a table of joint outputs keyed by
(utterance, label prefix) and scored by `rnnt_log_prob`, the NumPy alpha/beta and brute-force
enumeration of tests/rnnt_reference.py.
"""

import re

import keras
import numpy as np
import pytest
import rnnt_reference as ref
import tensorflow as tf

from tfkd.losses import (
    PrefixRows,
    nbest_prefix_rows,
    prefix_rows,
    rnnt_log_prob,
    rnnt_nbest,
    rnnt_nbest_log_prob,
    rnnt_nbest_log_prob_from_joint,
)

LOG_ZERO = -1e30


def beam_like(rng, batch, num, max_labels, vocab, pad_label=7):
    """`(labels [B, N, U], lengths [B, N], count [B])`: 1-bests with edited copies, duplicates,
    empty hypotheses and padding slots; padded positions hold `pad_label`."""
    labels = np.full((batch, num, max_labels), pad_label, np.int32)
    lengths = np.zeros((batch, num), np.int32)
    count = rng.integers(1, num + 1, size=batch).astype(np.int32)
    count[0] = num
    for b in range(batch):
        best = list(rng.integers(1, vocab, size=rng.integers(0, max_labels + 1)))
        for n in range(num):
            kind = rng.integers(0, 4)
            if n == 0 or kind == 0:
                hyp = list(best)  # a duplicate of the 1-best
            elif kind == 1:
                hyp = []
            else:
                hyp = list(best[: rng.integers(0, len(best) + 1)])
                hyp += list(rng.integers(1, vocab, size=rng.integers(0, 3)))
            hyp = hyp[:max_labels]
            labels[b, n, : len(hyp)] = hyp
            lengths[b, n] = len(hyp)
    return labels, lengths, count


class PrefixTable:
    """Joint outputs `[T, V]` per (utterance, prefix), the ground truth of every lattice."""

    def __init__(self, rng, frames, vocab, scale=1.0):
        self.rng, self.frames, self.vocab, self.scale = rng, frames, vocab, scale
        self.table = {}

    def __call__(self, b, prefix):
        key = (b, tuple(int(x) for x in prefix))
        if key not in self.table:
            self.table[key] = self.rng.normal(size=(self.frames, self.vocab)) * self.scale
        return self.table[key]

    def lattice(self, b, labels, length, max_labels):
        """`[T, U+1, V]` lattice of one hypothesis, padded nodes filled with noise."""
        nodes = [self(b, labels[:u]) for u in range(length + 1)]
        nodes += [self.rng.normal(size=(self.frames, self.vocab))] * (max_labels - length)
        return np.stack(nodes, axis=1)

    def row_logits(self, rows, labels):
        rows = [x.numpy() for x in (rows.row_utt, rows.row_hyp, rows.row_pos)]
        out = [self(b, labels[b, n, :u]) for b, n, u in zip(*rows, strict=True)]
        return np.stack(out).astype(np.float32)


def problem(seed, batch=5, num=4, max_labels=5, frames=6, vocab=7, scale=1.0):
    rng = np.random.default_rng(seed)
    labels, lengths, count = beam_like(rng, batch, num, max_labels, vocab)
    logit_lengths = rng.integers(1, frames + 1, size=batch).astype(np.int32)
    logit_lengths[0] = frames
    table = PrefixTable(rng, frames, vocab, scale)
    rows = nbest_prefix_rows(labels, lengths, count)
    row_logits = table.row_logits(rows, labels)
    # Padding rows and frames beyond T_b: anything.
    real = np.arange(len(row_logits)) < int(rows.num_rows)
    row_logits[~real] = rng.normal(size=row_logits[~real].shape) * 50
    return dict(
        labels=labels,
        lengths=lengths,
        count=count,
        logit_lengths=logit_lengths,
        table=table,
        rows=rows,
        row_logits=row_logits,
        valid=np.arange(num)[None] < count[:, None],
    )


def separate_lattices(p):
    """`[B·N, T, U+1, V]` float64: each hypothesis's own lattice from the prefix table."""
    batch, num, max_labels = p["labels"].shape
    return np.stack(
        [
            p["table"].lattice(b, p["labels"][b, n], p["lengths"][b, n], max_labels)
            for b in range(batch)
            for n in range(num)
        ]
    )


def value_and_grad(p, weights, row_logits=None):
    z = tf.constant(p["row_logits"] if row_logits is None else row_logits)
    with tf.GradientTape() as tape:
        tape.watch(z)
        scores = rnnt_nbest_log_prob(z, p["rows"], p["labels"], p["logit_lengths"], p["lengths"])
        total = tf.reduce_sum(tf.where(p["valid"], scores * weights, 0.0))
    return scores.numpy(), tape.gradient(total, z).numpy()


# ----------------------------------------------------------------------------------------------
# Rows.


def test_rows_of_a_hand_made_nbest():
    labels = np.array(
        [
            [[5, 6, 7, 9], [5, 6, 8, 9], [5, 6, 7, 0]],  # a duplicate (n = 2) of n = 0
            [[3, 3, 3, 3], [3, 0, 0, 0], [5, 5, 5, 5]],  # an empty 1-best, a padding slot
        ]
    )
    lengths = np.array([[3, 4, 3], [0, 1, 4]])
    rows = nbest_prefix_rows(labels, lengths, nbest_count=[3, 2])
    assert int(rows.num_rows) == 8 and rows.row_utt.shape == (16,)
    # Prefixes (), (5), (5 6), (5 6 7), (5 6 8), (5 6 8 9); then (), (3) of utterance 1.
    np.testing.assert_array_equal(rows.row_utt.numpy()[:8], [0, 0, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(rows.row_hyp.numpy()[:8], [0, 0, 0, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(rows.row_pos.numpy()[:8], [0, 1, 2, 3, 3, 4, 0, 1])
    np.testing.assert_array_equal(rows.row_utt.numpy()[8:], 0)  # padding rows
    np.testing.assert_array_equal(
        rows.node_rows.numpy(),
        [
            [[0, 1, 2, 3, 0], [0, 1, 2, 4, 5], [0, 1, 2, 3, 0]],
            [[6, 0, 0, 0, 0], [6, 7, 0, 0, 0], [0, 0, 0, 0, 0]],
        ],
    )
    np.testing.assert_array_equal(rows.has_rows.numpy(), [[1, 1, 1], [1, 1, 0]])
    exact = nbest_prefix_rows(labels, lengths, nbest_count=[3, 2], pad_to_bucket=False)
    assert exact.row_utt.shape == (8,)
    # Without a count every slot is real: the third hypothesis of utterance 1 adds 4 rows (its
    # empty prefix is the row of hypothesis 0).
    assert int(nbest_prefix_rows(labels, lengths).num_rows) == 12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rows_are_the_distinct_prefixes_owned_by_their_first_hypothesis(seed):
    rng = np.random.default_rng(seed)
    labels, lengths, count = beam_like(rng, 6, 4, 6, 5)
    rows = nbest_prefix_rows(labels, lengths, count)
    row_utt, row_hyp, row_pos = (x.numpy() for x in (rows.row_utt, rows.row_hyp, rows.row_pos))
    node_rows = rows.node_rows.numpy()
    owners = {}  # (b, prefix) -> first (n, u) with it
    for b in range(6):
        for n in range(int(count[b])):
            for u in range(int(lengths[b, n]) + 1):
                owners.setdefault((b, tuple(labels[b, n, :u])), (n, u))
    assert int(rows.num_rows) == len(owners)
    expected_order = sorted((b, n, u) for (b, _), (n, u) in owners.items())
    got_order = list(zip(row_utt, row_hyp, row_pos, strict=True))[: len(owners)]
    assert got_order == expected_order
    for b in range(6):
        for n in range(4):
            for u in range(int(lengths[b, n]) + 1 if n < count[b] else 0):
                r = node_rows[b, n, u]
                assert (row_utt[r], row_pos[r]) == (b, u)
                np.testing.assert_array_equal(labels[b, row_hyp[r], :u], labels[b, n, :u])
                assert (row_hyp[r], u) == owners[(b, tuple(labels[b, n, :u]))]
    assert (node_rows >= 0).all() and (node_rows < len(row_utt)).all()


def test_row_buckets_bound_padding_and_the_number_of_shapes():
    sizes = [int(prefix_rows.row_bucket(n)) for n in range(0, 4097)]
    assert sizes[:2] == [16, 16] and sizes[16] == 16 and sizes[17] == 32
    assert [int(prefix_rows.row_bucket(n)) for n in (100, 200, 1000, 1047)] == [
        112,
        224,
        1024,
        1232,
    ]
    for n, size in enumerate(sizes):
        assert size >= n and size % 16 == 0
        assert size <= max(16, -(-int(np.ceil(n * 2**0.25)) // 16) * 16)
    # A training run with up to 4096 rows compiles the kernels for at most 4 shapes per octave.
    assert len(set(sizes)) <= 4 * np.log2(4096 / 16) + 1
    rows = nbest_prefix_rows(np.ones([3, 2, 40], np.int32), np.full([3, 2], 40))
    assert int(rows.num_rows) == 123 and rows.row_utt.shape == (128,)


# ----------------------------------------------------------------------------------------------
# Values and gradients.


@pytest.mark.parametrize("seed", [3, 4])
def test_values_and_gradients_equal_separate_lattices(seed):
    p = problem(seed, scale=2.0)
    batch, num, max_labels = p["labels"].shape
    weights = np.random.default_rng(seed).normal(size=(batch, num)).astype(np.float32)
    scores, grad = value_and_grad(p, weights)
    lattices = tf.constant(separate_lattices(p).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(lattices)
        want = rnnt_log_prob(
            lattices,
            p["labels"].reshape(-1, max_labels),
            np.repeat(p["logit_lengths"], num),
            p["lengths"].reshape(-1),
        )
        want = tf.reshape(want, [batch, num])
        total = tf.reduce_sum(tf.where(p["valid"], want * weights, 0.0))
    lattice_grad = tape.gradient(total, lattices).numpy().reshape(batch, num, *lattices.shape[1:])
    valid = p["valid"]
    np.testing.assert_allclose(scores[valid], want.numpy()[valid], rtol=1e-6, atol=1e-5)
    assert (scores[~valid] == np.float32(LOG_ZERO)).all()
    # The float64 NumPy recursion agrees too.
    exact = ref.batch_log_prob(
        separate_lattices(p),
        p["labels"].reshape(-1, max_labels),
        np.repeat(p["logit_lengths"], num),
        p["lengths"].reshape(-1),
    ).reshape(batch, num)
    np.testing.assert_allclose(scores[valid], exact[valid], rtol=1e-6, atol=1e-4)
    # The gradient of a row is the sum over the lattice nodes that read it.
    rows = p["rows"]
    expected = np.zeros_like(grad)
    for b in range(batch):
        for n in range(num):
            for u in range(int(p["lengths"][b, n]) + 1 if valid[b, n] else 0):
                expected[rows.node_rows[b, n, u]] += lattice_grad[b, n, :, u]
    np.testing.assert_allclose(grad, expected, rtol=0, atol=1e-5)
    assert np.abs(grad).max() > 0.1


def test_equals_brute_force_enumeration_on_tiny_lattices():
    p = problem(5, batch=4, num=3, max_labels=3, frames=3, vocab=4)
    scores, _ = value_and_grad(p, np.ones(p["valid"].shape, np.float32))
    checked = 0
    for b in range(4):
        for n in range(int(p["count"][b])):
            t_b, u_n = int(p["logit_lengths"][b]), int(p["lengths"][b, n])
            lattice = p["table"].lattice(b, p["labels"][b, n], u_n, u_n)[:t_b]
            want = ref.brute_force_log_prob(lattice, p["labels"][b, n, :u_n])
            np.testing.assert_allclose(scores[b, n], want, rtol=0, atol=1e-5)
            checked += 1
    assert checked >= 8


def test_gradient_matches_finite_differences_of_the_float64_objective():
    p = problem(6, batch=2, num=3, max_labels=3, frames=3, vocab=4)
    rows = p["rows"]
    weights = np.random.default_rng(6).normal(size=p["valid"].shape)
    real = int(rows.num_rows)
    _, grad = value_and_grad(p, weights.astype(np.float32))
    node_rows = rows.node_rows.numpy()

    def objective(row_logits):  # float64, through the NumPy recursion
        total = 0.0
        for b in range(2):
            for n in range(int(p["count"][b])):
                t_b, u_n = int(p["logit_lengths"][b]), int(p["lengths"][b, n])
                lattice = np.stack([row_logits[node_rows[b, n, u]] for u in range(u_n + 1)], 1)
                total += weights[b, n] * ref.alpha_beta(lattice[:t_b], p["labels"][b, n, :u_n])[2]
        return total

    numeric = ref.numeric_grad(objective, p["row_logits"][:real].astype(np.float64))
    np.testing.assert_allclose(grad[:real], numeric, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(grad[real:], 0.0)


def test_gradient_is_exactly_zero_at_padding_rows_and_frames_even_with_garbage():
    p = problem(7)
    weights = np.ones(p["valid"].shape, np.float32)
    clean_scores, clean_grad = value_and_grad(p, weights)
    rows = p["rows"]
    real = np.arange(len(p["row_logits"])) < int(rows.num_rows)
    frames = p["logit_lengths"][rows.row_utt.numpy()]
    pad_frame = np.arange(p["row_logits"].shape[1])[None, :] >= frames[:, None]
    garbage = p["row_logits"].copy()
    garbage[~real] = np.nan
    garbage[pad_frame & real[:, None]] = np.inf
    garbage[~real, 0, 0] = 1e30
    scores, grad = value_and_grad(p, weights, garbage)
    np.testing.assert_array_equal(scores[p["valid"]], clean_scores[p["valid"]])
    assert np.isfinite(grad).all()
    np.testing.assert_array_equal(grad[~real], 0.0)
    np.testing.assert_array_equal(grad[pad_frame], 0.0)
    np.testing.assert_allclose(grad, clean_grad, rtol=0, atol=1e-6)
    assert pad_frame[real].any() and (~real).any()


def test_empty_hypotheses_and_utterances_without_rows():
    rng = np.random.default_rng(8)
    labels = np.zeros((3, 2, 2), np.int32)
    lengths = np.zeros((3, 2), np.int32)
    logit_lengths = np.array([4, 2, 3], np.int32)
    # Utterance 2 has no hypothesis at all; every real hypothesis is empty (U = 0).
    rows = nbest_prefix_rows(labels, lengths, nbest_count=[2, 1, 0])
    assert int(rows.num_rows) == 2
    row_logits = tf.constant(rng.normal(size=(16, 4, 5)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(row_logits)
        scores = rnnt_nbest_log_prob(row_logits, rows, labels, logit_lengths, lengths)
    grad = tape.gradient(scores, row_logits).numpy()
    blank_lp = ref.log_softmax(row_logits.numpy())[..., 0]
    np.testing.assert_allclose(scores[0], [blank_lp[0].sum()] * 2, rtol=1e-6)
    np.testing.assert_allclose(scores[1, 0], blank_lp[1, :2].sum(), rtol=1e-6)
    np.testing.assert_array_equal(scores.numpy()[[1, 2, 2], [1, 0, 1]], np.float32(LOG_ZERO))
    np.testing.assert_array_equal(grad[2:], 0.0)
    # Row 0 is read by both hypotheses of utterance 0: twice the gradient of one.
    soft = np.exp(ref.log_softmax(row_logits.numpy()[0]))
    np.testing.assert_allclose(grad[0], 2 * (np.eye(5)[0] - soft), atol=1e-6)
    # A batch without any row is legal too.
    none = nbest_prefix_rows(labels, lengths, nbest_count=[0, 0, 0])
    assert int(none.num_rows) == 0
    scores = rnnt_nbest_log_prob(row_logits, none, labels, logit_lengths, lengths)
    np.testing.assert_array_equal(scores.numpy(), np.float32(LOG_ZERO))


def test_nonzero_blank_and_low_precision_logits():
    p = problem(9)
    labels = np.where(p["labels"] == 3, 0, p["labels"])  # id 3 is the blank now
    rows = nbest_prefix_rows(labels, p["lengths"], p["count"])
    row_logits = p["table"].row_logits(rows, labels)
    z16 = tf.constant(row_logits, tf.bfloat16)
    with tf.GradientTape() as tape:
        tape.watch(z16)
        scores = rnnt_nbest_log_prob(z16, rows, labels, p["logit_lengths"], p["lengths"], blank=3)
    grad = tape.gradient(scores, z16)
    assert grad.dtype == tf.bfloat16
    num, max_labels = labels.shape[1:]
    lattices = np.stack(
        [
            p["table"].lattice(b, labels[b, n], p["lengths"][b, n], max_labels)
            for b in range(len(labels))
            for n in range(num)
        ]
    )
    rounded = tf.cast(tf.cast(lattices, tf.bfloat16), tf.float32)
    want = rnnt_log_prob(
        rounded,
        labels.reshape(-1, max_labels),
        np.repeat(p["logit_lengths"], num),
        p["lengths"].reshape(-1),
        blank=3,
    ).numpy()
    valid = p["valid"]
    np.testing.assert_allclose(scores.numpy()[valid], want.reshape(valid.shape)[valid], rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Graph, XLA, chunks.


def test_compiles_inside_a_jit_compiled_function_and_a_cond():
    p = problem(10)
    weights = np.ones(p["valid"].shape, np.float32)
    eager_scores, eager_grad = value_and_grad(p, weights)

    def step(z, use):
        with tf.GradientTape() as tape:
            tape.watch(z)
            scores = tf.cond(
                use,
                lambda: rnnt_nbest_log_prob(
                    z, p["rows"], p["labels"], p["logit_lengths"], p["lengths"]
                ),
                lambda: tf.zeros(p["valid"].shape),
            )
            total = tf.reduce_sum(tf.where(p["valid"], scores, 0.0))
        return scores, tape.gradient(total, z)

    z = tf.constant(p["row_logits"])
    for fn in (tf.function(step, jit_compile=True), tf.function(step)):
        scores, grad = fn(z, tf.constant(True))
        np.testing.assert_allclose(scores.numpy(), eager_scores, rtol=1e-6)
        np.testing.assert_allclose(grad.numpy(), eager_grad, atol=1e-6)


class RowJoint(keras.layers.Layer):
    def __init__(self, vocab):
        super().__init__()
        self.hidden, self.out = keras.layers.Dense(6), keras.layers.Dense(vocab)

    def call(self, enc, pred):  # [R, Tc, D], [R, Dp] -> [R, Tc, V]
        return self.out(tf.tanh(self.hidden(enc) + pred[:, None, :]))


@pytest.mark.parametrize("time_chunk", [1, 4, None])
def test_chunked_from_joint_matches_the_plain_path(time_chunk):
    p = problem(11, frames=7)
    rng = np.random.default_rng(11)
    rows = p["rows"]
    enc = tf.constant(rng.normal(size=(5, 7, 3)).astype(np.float32))
    pred = tf.constant(rng.normal(size=(len(rows.row_utt), 6)).astype(np.float32))
    joint = RowJoint(7)
    joint(tf.gather(enc, rows.row_utt), pred)
    args = (rows, p["labels"], p["logit_lengths"], p["lengths"])
    weights = rng.normal(size=p["valid"].shape).astype(np.float32)

    def run(chunked):
        with tf.GradientTape() as tape:
            tape.watch([enc, pred])
            if chunked:
                scores = rnnt_nbest_log_prob_from_joint(
                    enc, pred, joint, *args, time_chunk=time_chunk
                )
            else:
                scores = rnnt_nbest_log_prob(joint(tf.gather(enc, rows.row_utt), pred), *args)
            total = tf.reduce_sum(tf.where(p["valid"], scores * weights, 0.0))
        grads = tape.gradient(total, [enc, pred, *joint.trainable_variables])
        return [scores] + [tf.convert_to_tensor(g) for g in grads]

    plain = run(False)
    for got in (run(True), tf.function(lambda: run(True))()):
        for g, w in zip(got, plain, strict=True):
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-5)


def _full_size_values(hlo, shape):
    full = "f32[" + ",".join(map(str, shape)) + "]"
    entry = hlo[hlo.index("\nENTRY") :].splitlines()[1:]
    return [line for line in entry if f"= {full}" in line and "parameter(" not in line]


def test_compiled_kernels_create_no_full_size_tensor_but_the_gradient():
    rng = np.random.default_rng(12)
    labels, lengths, count = beam_like(rng, 3, 4, 4, 64)
    rows = nbest_prefix_rows(labels, lengths, count)
    row_logits = tf.constant(rng.normal(size=(len(rows.row_utt), 5, 64)).astype(np.float32))
    args = [row_logits, rows, tf.constant(labels), tf.constant([5, 3, 4]), tf.constant(lengths)]
    log_prob, residuals = rnnt_nbest._forward_kernel(*args, blank=0, factors=(2, 32))
    hlo_fwd = rnnt_nbest._forward_kernel.experimental_get_compiler_ir(
        *args, blank=0, factors=(2, 32)
    )(stage="optimized_hlo")
    hlo_bwd = rnnt_nbest._backward_kernel.experimental_get_compiler_ir(
        *args, residuals, tf.ones([3, 4]), blank=0, num_static=4
    )(stage="optimized_hlo")
    assert _full_size_values(hlo_fwd, row_logits.shape) == []
    (grad,) = _full_size_values(hlo_bwd, row_logits.shape)
    assert "ROOT" in grad and "fusion" in grad  # XLA:CPU may run the fusion as a parallel call


# ----------------------------------------------------------------------------------------------
# Errors.


def _valid_args():
    labels = np.array([[[1, 2, 3], [1, 4, 0]], [[4, 0, 0], [4, 5, 0]]], np.int32)
    lengths = np.array([[3, 2], [1, 2]], np.int32)
    rows = nbest_prefix_rows(labels, lengths)
    return dict(
        row_logits=np.zeros((len(rows.row_utt), 4, 6), np.float32),
        rows=rows,
        nbest_labels=labels,
        logit_lengths=np.array([4, 4], np.int32),
        nbest_lengths=lengths,
    )


def _other_rows():
    """Rows of labels where hypothesis 1 of utterance 0 is (1 2): node (0, 1, 2) then reads the
    row of prefix (1 2), not (1 4)."""
    return nbest_prefix_rows(
        np.array([[[1, 2, 3], [1, 2, 0]], [[4, 0, 0], [4, 5, 0]]]), np.array([[3, 2], [1, 2]])
    )


_INVALID = {
    "zero frames": (dict(logit_lengths=[0, 4]), "logit_lengths must be >= 1"),
    "too many frames": (dict(logit_lengths=[5, 4]), "logit_lengths must be <= the number of"),
    "too many labels": (
        dict(nbest_lengths=[[4, 2], [1, 2]]),
        "nbest_lengths must be <= nbest_labels.shape[1] (U)",
    ),
    "blank as label": (
        dict(nbest_labels=[[[1, 0, 3], [1, 4, 0]], [[4, 0, 0], [4, 5, 0]]]),
        "nbest_labels must not contain the blank id",
    ),
    "label id too large": (
        dict(nbest_labels=[[[1, 2, 6], [1, 4, 0]], [[4, 0, 0], [4, 5, 0]]]),
        "label ids must be in [0, V) at positions < nbest_lengths",
    ),
    "rows of other labels": (dict(rows=_other_rows), "rows do not match nbest_labels"),
    "one row too few": (
        dict(row_logits=lambda a: a["row_logits"][:-1]),
        "row_logits must have one row per prefix row (R)",
    ),
    "lengths shape": (
        dict(nbest_lengths=[[3, 2, 0], [1, 2, 0]]),
        "nbest_lengths must be [B, N] like nbest_labels",
    ),
}


@pytest.mark.parametrize("mode", ["eager", "tf.function"])
@pytest.mark.parametrize("case", sorted(_INVALID))
def test_invalid_inputs_raise_a_clear_error(case, mode):
    overrides, message = _INVALID[case]
    args = _valid_args()
    for key, value in overrides.items():
        if callable(value):
            value = value(args) if key == "row_logits" else value()
        args[key] = value
    args = {k: v if isinstance(v, PrefixRows) else tf.constant(v) for k, v in args.items()}
    fn = rnnt_nbest_log_prob if mode == "eager" else tf.function(rnnt_nbest_log_prob)
    pattern = re.escape(f"rnnt_nbest_log_prob: {message}")
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        fn(**args)


def test_valid_arguments_of_the_error_cases_pass():
    scores = rnnt_nbest_log_prob(**_valid_args()).numpy()
    assert scores.shape == (2, 2) and np.isfinite(scores).all()
    # All-zero logits: the value of the enumeration over every alignment.
    np.testing.assert_allclose(scores[1, 0], ref.brute_force_log_prob(np.zeros((4, 2, 6)), [4]))
