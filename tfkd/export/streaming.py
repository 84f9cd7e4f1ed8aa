"""On-device graphs of a causal student: whole-utterance and streaming greedy transcription.

Both graphs are plain TF over the student's Keras layers with static loop structure, so the
TFLite converter maps them to builtin ops (`tfkd.export.tflite` converts them through
`keras.export.ExportArchive`, the path that works on TF 2.17):

- `whole_utterance_fn`: `waveform [1, N]` (any N), `waveform_length [1]` -> `token_ids [U]`,
  `frame_log_probs [T', V]` (log-posteriors of each encoder frame against the label state at
  the frame's start). Features, the encoder's full `call`, then a `tf.while_loop` over encoder
  frames whose body is one unrolled greedy frame (below).
- `StreamingGraph.step`: one chunk of audio plus the state -> the chunk's tokens and the new
  state. Features, `encoder.stream_step`, and the greedy frame unrolled for the chunk's
  (static) number of encoder frames.

Greedy frame: up to `max_symbols_per_frame` labels, then blank is forced: exactly the steps of
`tfkd.decoding.greedy_decode`, so both graphs give its tokens.

Streaming feature state. Frame t covers samples [t*S, t*S + W) (W = 400, S = 160 at 16 kHz).
The state keeps the last H = W - S samples; a chunk of C samples (a multiple of S) then
yields exactly C/S new frames, the same frames the whole utterance has. The stream starts
with the state holding the first H samples of the audio (`StreamingSession` in
`tfkd.export.tflite` does this buffering). The last chunk is zero padded and `valid_samples`
says how many of its samples are real. The encoder zeroes the frames past the end at every
reduction stage (`stream_step(..., valid_frames)`), as the whole-utterance path zeroes frames
past a length, and encoder frames past the end are skipped: the concatenated tokens equal
whole-utterance decoding, also on the final encoder frame, whose receptive field reaches past
the end in a convolutional front end.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from tfkd.decoding import stepping
from tfkd.decoding.stepping import BLANK
from tfkd.features import LogMel


class RuntimeMelLogMel(LogMel):
    """`LogMel` whose mel projection weights are not a graph constant (for int8 conversion).

    Dynamic-range quantisation turns every constant matmul weight into int8 and quantises the
    matmul's input on the fly, per row. The power spectrum spans many orders of magnitude, so an
    int8 power spectrum loses its quiet bins and the log-mel features break (measured: log-prob
    errors near 1.0 on a tiny student). Adding a runtime zero (from the input) to the mel matrix
    keeps that one matmul in float; everything else is quantised as usual. Same numbers as
    `LogMel` otherwise.
    """

    def to_mel(self, power):
        # 0 for finite audio (power >= 0); the converter cannot fold it, so the matrix stays float.
        zero = tf.minimum(tf.reduce_sum(power[:1, :1, :1]), 0.0)
        return tf.tensordot(power, self.mel_matrix + zero, axes=1)

    @classmethod
    def like(cls, frontend):
        """A built copy of the `LogMel` `frontend` (same configuration)."""
        layer = cls.from_config(frontend.get_config())
        layer(tf.zeros([1, 2 * layer.frame_length]))
        return layer


def _greedy_frame(model, net, enc_frame, active, pred_out, state, max_symbols):
    """Greedy decoding of one encoder frame, unrolled (`max_symbols + 1` lattice steps).

    Args:
      model: the transducer.
      net: its prediction network.
      enc_frame: [B, J] encoder side (projected) of this frame.
      active: bool [B], rows for which this frame exists.
      pred_out, state: prediction side [B, J] and network state after the labels so far.
      max_symbols: labels allowed on one frame.

    Returns:
      (tokens int32 [B, max_symbols] with 0 for no label, log-prob float32 [B] of the steps
      taken, first-step log-posteriors [B, V], pred_out, state).
    """
    tokens, score, first = [], tf.zeros(tf.shape(active), tf.float32), None
    still = active
    for sub in range(max_symbols + 1):
        log_probs = stepping.joint_log_probs(model, enc_frame, pred_out)
        if first is None:
            first = log_probs
        if sub == max_symbols:
            # The frame's quota is used up: only blank may follow (as in greedy_decode).
            choice = tf.fill(tf.shape(active), BLANK)
        else:
            choice = tf.argmax(log_probs, axis=-1, output_type=tf.int32)
        # A masked sum, not a batched gather: full-int8 quantisation rejects the gather's
        # rescaling ("same scale constraint").
        picked = tf.one_hot(choice, tf.shape(log_probs)[1], dtype=log_probs.dtype)
        step_lp = tf.reduce_sum(log_probs * picked, axis=1)
        score += step_lp * tf.cast(still, step_lp.dtype)
        emit = still & (choice != BLANK)
        if sub < max_symbols:
            tokens.append(tf.where(emit, choice, 0))
            new_out, new_state = stepping.prediction_step(model, net, choice, state)
            pred_out, state = _select_rows(emit, (new_out, new_state), (pred_out, state))
        still = emit
    return tf.stack(tokens, axis=1), score, first, pred_out, state


def whole_utterance_fn(model, frontend, max_symbols_per_frame=3):
    """`fn(waveform [1, N], waveform_length [1]) -> {token_ids [U], frame_log_probs [T', V]}`."""
    net = stepping.prediction_network(model)
    m = int(max_symbols_per_frame)

    def transcribe(waveform, waveform_length):
        feats, lengths = frontend(waveform, waveform_length)
        enc, enc_lengths = model.encode(feats, lengths, training=False)
        enc = stepping.encoder_side(model, enc)[0]  # [T', J]
        frames = tf.minimum(enc_lengths[0], tf.shape(enc)[0])
        pred_out, state = stepping.start(model, net, 1)
        vocab = model.vocab_size
        tokens = tf.zeros([tf.shape(enc)[0], m], tf.int32)
        first = tf.zeros([tf.shape(enc)[0], vocab], tf.float32)

        def body(t, pred_out, state, tokens, first):
            frame_tokens, _, lp, pred_out, state = _greedy_frame(
                model, net, enc[t][None], tf.constant([True]), pred_out, state, m
            )
            # Row writes by masking: plain builtins (no scatter or TensorList).
            row = (tf.range(tf.shape(tokens)[0]) == t)[:, None]
            tokens = tf.where(row, frame_tokens, tokens)
            first = tf.where(row, lp, first)
            return t + 1, pred_out, state, tokens, first

        _, _, _, tokens, first = tf.while_loop(
            lambda t, *_: t < frames, body, (tf.constant(0), pred_out, state, tokens, first)
        )
        flat = tf.reshape(tokens, [-1])
        token_ids = tf.gather(flat, tf.reshape(tf.where(flat > 0), [-1]))
        return {"token_ids": token_ids, "frame_log_probs": first[:frames]}

    return transcribe


class StreamingGraph:
    """The streaming step of a causal student, with its flat state.

    Args:
      model: a built causal transducer.
      frontend: its `LogMel` layer (normalisation "none" or "global": per-utterance statistics
        cannot stream).
      chunk_ms: audio per step; a multiple of `frontend.frame_step_ms` x the encoder's
        `chunk_multiple` (e.g. 40, 80, ... ms for a 4x frame-stacking student).
      max_symbols_per_frame: label limit per encoder frame.

    Raises:
      ValueError: non-causal model, utterance normalisation, or an unusable chunk size.
    """

    def __init__(self, model, frontend, chunk_ms=320, max_symbols_per_frame=3):
        if not model.causal:
            raise ValueError("only a causal student can stream")
        if frontend.normalization == "utterance":
            raise ValueError("per-utterance feature normalisation cannot stream")
        self.model, self.frontend = model, frontend
        self.net = stepping.prediction_network(model)
        self.max_symbols = int(max_symbols_per_frame)
        step = frontend.frame_step
        self.history = frontend.frame_length - step
        self.chunk_samples = int(round(chunk_ms * frontend.sample_rate / 1000.0))
        self.chunk_frames = self.chunk_samples // step
        multiple = model.encoder.chunk_multiple
        if self.chunk_samples % step or self.chunk_frames % multiple or self.chunk_frames == 0:
            unit_ms = multiple * frontend.frame_step_ms
            raise ValueError(
                f"chunk_ms={chunk_ms} must be a positive multiple of {unit_ms:g} ms "
                f"({multiple} frames of {frontend.frame_step_ms:g} ms) for this student"
            )
        self.reduction = model.reduction_factor
        self.chunk_enc_frames = self.chunk_frames // self.reduction
        self.state_names, self._structure = self._initial_structure()

    def _initial_structure(self):
        pred_out, pred_state = stepping.start(self.model, self.net, 1)
        state = {
            "audio": tf.zeros([1, self.history], tf.float32),
            "encoder": self.model.encoder.initial_state(1),
            "prediction": pred_state,
            "prediction_out": pred_out,
        }
        names = [_path_name(p) for p in _paths(state)]
        return names, state

    def initial_state(self, first_samples):
        """Flat state list for a stream whose first `H` samples are `first_samples` [H]."""
        state = dict(self._structure)
        state["audio"] = tf.reshape(tf.convert_to_tensor(first_samples, tf.float32), [1, -1])
        return [t.numpy() for t in tf.nest.flatten(state)]

    def state_specs(self):
        """TensorSpecs of the flat state, named after their paths (`encoder/lstm0/h`, ...)."""
        flat = tf.nest.flatten(self._structure)
        return [
            tf.TensorSpec(t.shape, t.dtype, name=n)
            for t, n in zip(flat, self.state_names, strict=True)
        ]

    def input_signature(self):
        return [
            tf.TensorSpec([1, self.chunk_samples], tf.float32, name="audio_chunk"),
            tf.TensorSpec([1], tf.int32, name="valid_samples"),
            *self.state_specs(),
        ]

    def step(self, audio_chunk, valid_samples, *flat_state):
        """One chunk: audio [1, C], valid samples [1] -> dict of `tokens` [1, Tc*m] (0 = none),
        `score` [1], `log_probs` [1, Tc, V] (first-step posteriors) and `state_<i>` outputs."""
        state = tf.nest.pack_sequence_as(self._structure, list(flat_state))
        audio = tf.concat([state["audio"], audio_chunk], axis=1)
        feats, frame_count = self.frontend(audio, self.history + valid_samples)
        with _unrolled_lstms(self.model.encoder):
            enc, enc_state = self.model.encoder.stream_step(feats, state["encoder"], frame_count)
        enc = stepping.encoder_side(self.model, enc)
        enc_valid = (frame_count + self.reduction - 1) // self.reduction
        pred_out, pred_state = state["prediction_out"], state["prediction"]
        tokens, firsts, score = [], [], tf.zeros([1])
        for t in range(self.chunk_enc_frames):
            frame_tokens, lp_sum, first, pred_out, pred_state = _greedy_frame(
                self.model,
                self.net,
                enc[:, t],
                t < enc_valid,
                pred_out,
                pred_state,
                self.max_symbols,
            )
            tokens.append(frame_tokens)
            firsts.append(first)
            score += lp_sum
        new_state = {
            "audio": audio[:, -self.history :],
            "encoder": enc_state,
            "prediction": pred_state,
            "prediction_out": pred_out,
        }
        out = {
            "tokens": tf.concat(tokens, axis=1),
            "score": score,
            "log_probs": tf.stack(firsts, axis=1),
        }
        for i, t in enumerate(tf.nest.flatten(new_state)):
            out[f"state_{i}"] = t
        return out


def _select_rows(mask, new, old):
    """Row-wise choice over a nest: arithmetic for floats, `where` for integers.

    Full-int8 quantisation requires both inputs of a SELECT to share one scale, which the
    calibrated ranges of a new and an old state never do; a 0/1 blend has no such constraint.
    """

    def pick(n, o):
        m = tf.reshape(mask, [-1] + [1] * (len(n.shape) - 1))
        if n.dtype.is_floating:
            m = tf.cast(m, n.dtype)
            return n * m + o * (1.0 - m)
        return tf.where(m, n, o)

    return tf.nest.map_structure(pick, new, old)


@contextlib.contextmanager
def _unrolled_lstms(encoder):
    """Unrolls the encoder's Keras LSTMs while a chunk (static length) is traced.

    The chunk graph then has no WHILE op: simpler for on-device runtimes, and full-int8
    calibration crashes the converter (SIGSEGV, TF 2.17) on the WHILE of a Keras LSTM.
    """
    layers = [
        layer for layer in getattr(encoder, "lstms", []) if isinstance(layer, keras.layers.LSTM)
    ]
    saved = [layer.unroll for layer in layers]
    for layer in layers:
        layer.unroll = True
    try:
        yield
    finally:
        for layer, value in zip(layers, saved, strict=True):
            layer.unroll = value


def _paths(nest, prefix=()):
    """Key paths of a nest of dicts, in `tf.nest.flatten` order (sorted keys)."""
    if isinstance(nest, dict):
        return [p for k in sorted(nest) for p in _paths(nest[k], prefix + (k,))]
    return [prefix]


def _path_name(path):
    return "_".join(path)
