"""The joint run in chunks of frames, with a gradient that recomputes each chunk (memory-lean).

The driver of the memory-lean full-sum paths (`rnnt_chunked` on `[B, T, U+1, V]` lattices,
`rnnt_nbest` on `[R, T, V]` prefix rows). Neither path ever holds the joint's output for all
frames:

- forward: the joint runs on chunks of frames; for each chunk a kernel reduces the logits to a
  few small statistics (e.g. `logsumexp`, blank and next-label logits). The lattice recursion then
  runs on the statistics of all frames;
- backward: the lattice gives per-frame coefficients once; then each chunk's logits are
  recomputed under a `GradientTape`, the analytic `d logits` of that chunk is written by a
  kernel, and pushed through the joint with
  `tape.gradient(logits, [enc_chunk, prediction, *variables], output_gradients=d_logits)`.

Peak memory is about two chunks of logits (the chunk and its gradient) plus the joint's own
intermediates for one chunk. The price is one more joint evaluation (the recomputation).

Contract for `joint_fn(enc_chunk [X, Tc, D], prediction) -> logits [X, Tc, ...]`: frame-wise
(frame t of the output depends only on frame t of the encoder chunk) and deterministic (no
dropout: the backward pass recomputes it). It may be a Keras layer or any callable that reads
trainable variables; `tf.custom_gradient` finds them.

Eager mode: the forward chunks run with gradient recording paused (TF's internal
`stop_recording`, the mechanism `tf.recompute_grad` uses; this module is the one place that
imports it); without it, an outer tape would keep every chunk's intermediates alive. Inside
`tf.function` the gradient never traverses the forward loop, so nothing is kept either way.
"""

import contextlib

import tensorflow as tf

from tfkd.losses.rnnt import captured

try:  # TF-internal; only used to keep eager-mode memory low (see module docstring).
    from tensorflow.python.eager.record import stop_recording
except ImportError:  # pragma: no cover - layout of a future TF
    stop_recording = contextlib.nullcontext

# Default size of one chunk of float32 logits; the chunk's gradient doubles it.
DEFAULT_CHUNK_BYTES = 32 * 2**20


def static_or_tensor(x):
    """A Python int when `x` is statically known, else `x`."""
    value = tf.get_static_value(x)
    return int(value) if value is not None else x


def chunking(frames, logits_per_frame, time_chunk):
    """(number of chunks, frames per chunk): balanced, so padding stays below one frame per chunk.

    `logits_per_frame` is the size of one frame of the joint output (e.g. `B·(U+1)·V`). Python
    ints when the dims are static (static chunk shapes for XLA), tensors otherwise.
    """
    if time_chunk is not None and int(time_chunk) < 1:
        raise ValueError(f"time_chunk must be >= 1 or None, got {time_chunk}")
    if isinstance(frames, int) and isinstance(logits_per_frame, int):
        if time_chunk is None:
            time_chunk = max(DEFAULT_CHUNK_BYTES // (max(logits_per_frame, 1) * 4), 1)
        time_chunk = min(int(time_chunk), max(frames, 1))
        num_chunks = max(-(-frames // time_chunk), 1)  # T = 0 is rejected by the asserts
        return num_chunks, -(-frames // num_chunks)
    frames, logits_per_frame = (tf.cast(d, tf.int64) for d in (frames, logits_per_frame))
    if time_chunk is None:
        time_chunk = tf.maximum(DEFAULT_CHUNK_BYTES // (tf.maximum(logits_per_frame, 1) * 4), 1)
    time_chunk = tf.minimum(tf.cast(time_chunk, tf.int64), tf.maximum(frames, 1))
    num_chunks = tf.maximum((frames + time_chunk - 1) // time_chunk, 1)
    chunk = (frames + num_chunks - 1) // num_chunks
    return tf.cast(num_chunks, tf.int32), tf.cast(chunk, tf.int32)


def frames_slice(x, start, size):
    """`x[:, start:start+size]` with a static size when `size` is a Python int."""
    rank = x.shape.rank
    return tf.slice(x, [0, start] + [0] * (rank - 2), [-1, size] + [-1] * (rank - 2))


def probe_vocab(encoder_out, prediction, joint_fn):
    """V, the joint's output width: a Python int when static, else a scalar tensor.

    A one-frame probe, run without recording gradients, also builds a Keras joint outside any
    loop.
    """
    with stop_recording():
        probe = joint_fn(tf.stop_gradient(encoder_out[:, :1]), tf.stop_gradient(prediction))
    return probe.shape[-1] if probe.shape[-1] is not None else tf.shape(probe)[-1]


def _merge_chunks(stacked):
    """`[n, B, Tc, ...] -> [B, n*Tc, ...]`."""
    rank = stacked.shape.rank
    merged = tf.transpose(stacked, [1, 0] + list(range(2, rank)))
    shape = tf.shape(merged)
    return tf.reshape(merged, tf.concat([shape[:1], [shape[1] * shape[2]], shape[3:]], 0))


def _pad_frames(x, amount):
    """Zero frames appended on axis 1."""
    return tf.pad(x, [[0, 0], [0, amount]] + [[0, 0]] * (x.shape.rank - 2))


def forward_chunks(enc, pred, joint_fn, chunk_stats, num_stats, num_chunks, chunk):
    """Runs the joint chunk by chunk and keeps only per-chunk statistics.

    For chunk i (frames `[i·Tc, (i+1)·Tc)` of `enc [B, n·Tc, D]`),
    `chunk_stats(joint_fn(enc_chunk, pred), i·Tc)` returns `num_stats` float32 tensors with
    frames on axis 1; each is merged over the chunks to `[X, n·Tc, ...]`.
    """
    arrays = tuple(tf.TensorArray(tf.float32, size=num_chunks) for _ in range(num_stats))

    def body(i, arrays):
        start = i * chunk
        stats = chunk_stats(joint_fn(frames_slice(enc, start, chunk), pred), start)
        return i + 1, tuple(a.write(i, s) for a, s in zip(arrays, stats, strict=True))

    # parallel_iterations=1: in graph mode the loop would otherwise run up to 10 chunks at once,
    # each with its own logits, which defeats the point of chunking.
    _, arrays = tf.while_loop(lambda i, _: i < num_chunks, body, (0, arrays), parallel_iterations=1)
    return tuple(_merge_chunks(a.stack()) for a in arrays)


def backward_chunks(enc, pred, joint_fn, variables, chunk_grad, num_chunks, chunk):
    """Recomputes each chunk's logits under a tape and pushes the analytic d(logits) through.

    `chunk_grad(logits, start)` gives the chunk's d(logits). Returns `(d_enc [B, n·Tc, D],
    d_pred, d_variables)`.
    """
    d_enc = tf.TensorArray(enc.dtype, size=num_chunks)
    d_pred = tf.zeros_like(pred)
    d_vars = [tf.zeros(v.shape, v.dtype) for v in variables]

    def body(i, d_enc, d_pred, d_vars):
        start = i * chunk
        enc_chunk = frames_slice(enc, start, chunk)
        with tf.GradientTape() as tape:
            tape.watch([enc_chunk, pred])
            tape.watch(variables)
            logits = joint_fn(enc_chunk, pred)
        grads = tape.gradient(
            logits,
            [enc_chunk, pred, *variables],
            output_gradients=chunk_grad(logits, start),
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        grads = [tf.convert_to_tensor(g) for g in grads]
        d_vars = [a + g for a, g in zip(d_vars, grads[2:], strict=True)]
        return i + 1, d_enc.write(i, grads[0]), d_pred + grads[1], d_vars

    _, d_enc, d_pred, d_vars = tf.while_loop(
        lambda i, *_: i < num_chunks, body, (0, d_enc, d_pred, d_vars), parallel_iterations=1
    )
    return _merge_chunks(d_enc.stack()), d_pred, d_vars


def chunked_full_sum(
    encoder_out, prediction, joint_fn, frames, num_chunks, chunk, chunk_stats, num_stats,
    lattice_forward, lattice_backward,
):  # fmt: skip
    """A full-sum value over the joint's output, computed chunk by chunk, with its gradient.

    The shared custom-gradient driver of `rnnt_chunked` and `rnnt_nbest` (see module
    docstring). The caller supplies the kernels; this function owns the padding to whole
    chunks, the two chunk loops, the paused recording and the gradient's structure.

    Args:
      encoder_out: `[X, T, D]` encoder side, frames on axis 1.
      prediction: the prediction side, passed whole to every chunk.
      joint_fn: `(enc_chunk [X, Tc, D], prediction) -> logits`, frame-wise and deterministic.
      frames: T (Python int or scalar tensor).
      num_chunks, chunk: from `chunking`; the encoder side is zero padded to `num_chunks·chunk`
        frames.
      chunk_stats: `(logits, start) -> num_stats` float32 statistics of one chunk, frames on
        axis 1 (`start`: the chunk's first frame).
      num_stats: how many statistics `chunk_stats` returns.
      lattice_forward: `(stats cut to T frames) -> (value, residuals)`; `value` is returned.
      lattice_backward: `(residuals, stats, d_value) -> (per_frame, chunk_grad)`, called in the
        gradient: `per_frame` is a tuple of `[X, T, ...]` tensors (e.g. `logsumexp` and the
        lattice coefficients) and `chunk_grad(logits, per_frame_of_chunk, start, size)` gives the
        chunk's d(logits). Wrap forward tensors it reads in `captured`.

    Returns:
      `value`; its gradient flows to `encoder_out`, `prediction` and the variables `joint_fn`
      reads.
    """
    padded = num_chunks * chunk

    @tf.custom_gradient
    def full_sum(enc, pred):
        enc_padded = _pad_frames(tf.stop_gradient(enc), padded - frames)
        pred_const = tf.stop_gradient(pred)
        with stop_recording():
            stats = forward_chunks(
                enc_padded, pred_const, joint_fn, chunk_stats, num_stats, num_chunks, chunk
            )
            stats = tuple(s[:, :frames] for s in stats)
            value, residuals = lattice_forward(stats)

        def grad(dy, variables=None):
            variables = list(variables or [])
            per_frame, chunk_grad = lattice_backward(residuals, stats, dy)
            enc_, pred_, n_chunks, size = captured(enc_padded, pred_const, num_chunks, chunk)
            per_frame = tuple(_pad_frames(x, padded - frames) for x in per_frame)

            def grad_of_chunk(logits, start):
                sliced = tuple(frames_slice(x, start, size) for x in per_frame)
                return chunk_grad(logits, sliced, start, size)

            d_enc, d_pred, d_vars = backward_chunks(
                enc_, pred_, joint_fn, variables, grad_of_chunk, n_chunks, size
            )
            if not variables:
                return d_enc[:, :frames], d_pred
            return (d_enc[:, :frames], d_pred), d_vars

        return value, grad

    return full_sum(encoder_out, prediction)
