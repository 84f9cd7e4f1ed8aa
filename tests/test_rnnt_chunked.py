"""rnnt_loss_from_joint: same values and gradients as the plain path, chunk by chunk."""

import re

import keras
import numpy as np
import pytest
import rnnt_reference as ref
import tensorflow as tf

from tfkd.losses import (
    rnnt_log_prob,
    rnnt_log_prob_from_joint,
    rnnt_loss,
    rnnt_loss_from_joint,
)

B, T, U, V, D_ENC, D_PRED = 3, 7, 3, 6, 5, 4


class TinyJoint(keras.layers.Layer):
    """`out(tanh(enc_proj + pred_proj))`, the usual RNN-T joint, with trainable variables."""

    def __init__(self, vocab, hidden=8, **kwargs):
        super().__init__(**kwargs)
        self.enc_proj = keras.layers.Dense(hidden)
        self.pred_proj = keras.layers.Dense(hidden, use_bias=False)
        self.out = keras.layers.Dense(vocab)
        self.calls = []  # frames seen by each call (eager only)

    def call(self, enc, pred):
        if tf.executing_eagerly():
            self.calls.append(int(enc.shape[1]))
        hidden = tf.tanh(self.enc_proj(enc)[:, :, None, :] + self.pred_proj(pred)[:, None, :, :])
        return self.out(hidden)


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    _, labels, logit_lengths, label_lengths = ref.random_batch(rng, B, T, U, V)
    enc = tf.constant(rng.normal(size=(B, T, D_ENC)).astype(np.float32))
    pred = tf.constant(rng.normal(size=(B, U + 1, D_PRED)).astype(np.float32))
    joint = TinyJoint(V)
    joint(enc, pred)
    joint.calls.clear()
    return joint, enc, pred, labels, logit_lengths, label_lengths


def _values_and_grads(loss_fn, joint, enc, pred, *args, **kwargs):
    weights = tf.constant([1.0, -2.0, 0.5])
    with tf.GradientTape() as tape:
        tape.watch([enc, pred])
        values = loss_fn(joint, enc, pred, *args, **kwargs)
        total = tf.reduce_sum(weights * values)
    return values, tape.gradient(total, [enc, pred, *joint.trainable_variables])


def _plain(joint, enc, pred, *args, **kwargs):
    return rnnt_loss(joint(enc, pred), *args, **kwargs)


def _chunked(joint, enc, pred, *args, **kwargs):
    return rnnt_loss_from_joint(enc, pred, joint, *args, **kwargs)


def _assert_same(got, want):
    values, grads = got
    want_values, want_grads = want
    np.testing.assert_allclose(values.numpy(), want_values.numpy(), rtol=1e-6, atol=1e-6)
    assert len(grads) == len(want_grads) == 2 + 5  # enc, pred, 5 joint variables
    for g, w in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("time_chunk", [2, None])
def test_same_values_and_gradients_as_plain_path_eager(problem, time_chunk):
    joint, enc, pred, *args = problem
    want = _values_and_grads(_plain, joint, enc, pred, *args)
    got = _values_and_grads(_chunked, joint, enc, pred, *args, time_chunk=time_chunk)
    _assert_same(got, want)


def test_same_values_and_gradients_as_plain_path_in_tf_function_with_fastemit(problem):
    joint, enc, pred, *args = problem

    @tf.function
    def plain(enc, pred):
        return _values_and_grads(_plain, joint, enc, pred, *args, fastemit_lambda=0.2)

    @tf.function
    def chunked(enc, pred):
        return _values_and_grads(
            _chunked, joint, enc, pred, *args, time_chunk=2, fastemit_lambda=0.2
        )

    _assert_same(chunked(enc, pred), plain(enc, pred))


def test_log_prob_from_joint_matches_reference(problem):
    joint, enc, pred, labels, logit_lengths, label_lengths = problem
    got = rnnt_log_prob_from_joint(enc, pred, joint, labels, logit_lengths, label_lengths,
                                   time_chunk=4)  # fmt: skip
    logits = joint(enc, pred).numpy().astype(np.float64)
    want = ref.batch_log_prob(logits, labels, logit_lengths, label_lengths)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    plain = rnnt_log_prob(joint(enc, pred), labels, logit_lengths, label_lengths)
    np.testing.assert_allclose(got.numpy(), plain.numpy(), rtol=1e-6)


def test_joint_only_ever_sees_one_chunk_of_frames(problem):
    joint, enc, pred, *args = problem
    _values_and_grads(_chunked, joint, enc, pred, *args, time_chunk=3)
    # A one-frame probe, then T = 7 in 3 balanced chunks of 3 frames: forward, and the
    # recomputation in the backward pass. The whole [B, T, U+1, V] tensor is never built.
    assert joint.calls == [1] + [3] * 3 + [3] * 3


def test_joint_without_variables_and_low_precision_inputs():
    rng = np.random.default_rng(1)
    _, labels, logit_lengths, label_lengths = ref.random_batch(rng, 2, 5, 2, V)
    enc = tf.constant(rng.normal(size=(2, 5, V)), tf.bfloat16)
    pred = tf.constant(rng.normal(size=(2, 3, V)), tf.bfloat16)

    def additive(e, p):
        return e[:, :, None, :] + p[:, None, :, :]

    args = (labels, logit_lengths, label_lengths)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([enc, pred])
        chunked = rnnt_loss_from_joint(enc, pred, additive, *args, time_chunk=2)
        plain = rnnt_loss(additive(enc, pred), *args)
    np.testing.assert_allclose(chunked.numpy(), plain.numpy(), rtol=1e-6)
    for got, want in zip(tape.gradient(chunked, [enc, pred]), tape.gradient(plain, [enc, pred]),
                         strict=True):  # fmt: skip
        assert got.dtype == tf.bfloat16
        np.testing.assert_allclose(tf.cast(got, tf.float32), tf.cast(want, tf.float32),
                                   atol=1e-2)  # fmt: skip


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(logit_lengths=[0, 7, 7]), "logit_lengths must be >= 1"),
        (dict(labels=[[1, 2, 6], [1, 2, 3], [1, 2, 3]]), "label ids must be in [0, V)"),
        (dict(label_lengths=[4, 1, 1]), "label_lengths must be <= labels.shape[1] (U)"),
    ],
)
def test_invalid_inputs_raise_a_clear_error(problem, overrides, message):
    joint, enc, pred, labels, logit_lengths, label_lengths = problem
    args = dict(labels=labels, logit_lengths=logit_lengths, label_lengths=label_lengths)
    args.update({k: tf.constant(v) for k, v in overrides.items()})
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=re.escape(f"rnnt_loss_from_joint: {message}")
    ):
        rnnt_loss_from_joint(enc, pred, joint, **args)


def test_negative_fastemit_lambda_is_rejected_before_the_joint_runs(problem):
    joint, enc, pred, *args = problem
    with pytest.raises(
        ValueError, match=re.escape("rnnt_loss_from_joint: fastemit_lambda must be >= 0, got -1.0")
    ):
        rnnt_loss_from_joint(enc, pred, joint, *args, fastemit_lambda=-1.0)
    assert joint.calls == []
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="rnnt_loss_from_joint: fastemit_lambda must be >= 0"
    ):
        rnnt_loss_from_joint(enc, pred, joint, *args, fastemit_lambda=tf.constant(-0.5))


@pytest.mark.slow
def test_chunked_peak_memory_stays_a_fraction_of_the_logits():
    """Peak extra resident memory of one training step in graph mode, measured by the benchmark's
    child mode (fresh process, malloc allocator, VmHWM after a reset): the chunked path stays well
    below the logits size, the plain path through the same joint needs about two logits."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    tool = pathlib.Path(__file__).resolve().parents[1] / "tools" / "bench_rnnt_loss.py"
    shape = (2, 128, 64, 1024)  # 64 MiB of float32 logits
    env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="false", TF_CPP_MIN_LOG_LEVEL="3")
    extra = {}
    for impl in ("chunked", "plain+joint"):
        spec = ",".join(map(str, (impl, *shape, 2, 16)))
        out = subprocess.run([sys.executable, str(tool), "--_child", spec], capture_output=True,
                             text=True, env=env, timeout=600)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        extra[impl] = json.loads(out.stdout.strip().splitlines()[-1])["extra"] / (
            np.prod(shape) * 4
        )
    assert extra["chunked"] < 0.35, extra
    assert extra["plain+joint"] > 1.5, extra


def test_unknown_dims_in_a_traced_signature(problem):
    """Train steps trace with None dims (one trace for all batch shapes): both paths handle it."""
    joint, enc, pred, labels, logit_lengths, label_lengths = problem
    spec = [
        tf.TensorSpec([None, None, D_ENC]),
        tf.TensorSpec([None, None, D_PRED]),
        tf.TensorSpec([None, None], tf.int32),
        tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([None], tf.int32),
    ]

    @tf.function(input_signature=spec)
    def both(enc, pred, labels, logit_lengths, label_lengths):
        args = (labels, logit_lengths, label_lengths)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([enc, pred])
            chunked = rnnt_loss_from_joint(enc, pred, joint, *args, time_chunk=3)
            plain = rnnt_loss(joint(enc, pred), *args)
        sources = [enc, pred, *joint.trainable_variables]
        return chunked, plain, tape.gradient(chunked, sources), tape.gradient(plain, sources)

    for cut in (T, T - 2):  # two shapes, one trace
        chunked, plain, g_chunked, g_plain = both(
            enc[:, :cut], pred, labels, np.minimum(logit_lengths, cut), label_lengths
        )
        np.testing.assert_allclose(chunked.numpy(), plain.numpy(), rtol=1e-6)
        for got, want in zip(g_chunked, g_plain, strict=True):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=2e-6)
    assert both.experimental_get_tracing_count() == 1
