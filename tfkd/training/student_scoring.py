"""How a distillation trainer's student scores label sequences: full-sum `log P_S(y|x)`.

A `StudentScorer` is an object the trainer holds (`trainer.scorer`); it sees the student model
and the encoder output the trainer computed, never a batch. Three ways, the same values and
gradients:
- whole lattices: one `[T, U+1, V]` joint output per label sequence (`log_probs`),
  memory-lean (`tfkd.losses.rnnt_log_prob_from_joint`, time chunks) above `lean_joint_threshold`
  logits. Static shapes: the path for XLA (TPU);
- shared prefix rows (`share_prefixes`, the default without XLA): one joint row `[T, V]` per
  distinct (utterance, label prefix) of the sequences scored together (an N-best list, or one
  sequence per utterance), `tfkd.losses.rnnt_nbest_log_prob`; beam N-best lists share long
  prefixes, and padded label positions get no rows;
- shared prefix rows in time chunks (`tfkd.losses.rnnt_nbest_log_prob_from_joint`) when the rows
  of a step exceed `lean_joint_threshold` logits `R·T·V`. R depends on the data, so this choice
  is made per step at run time, outside the gradient tape: the trainer's `joint_path` hook
  returns `rows_exceed_threshold` and `lean_rows` (see `LossTermsTrainer.joint_path`).
Everything here runs per replica.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

from tfkd import losses


class StudentScorer:
    """Scores label sequences under the student `model` (see module docstring).

    Args:
        model: the student `Transducer`.
        jit_compile: whether the trainer's step is XLA-compiled.
        share_prefixes, lean_joint_threshold, joint_time_chunk: see `DistillationTrainer`;
            `share_prefixes=None`: `not jit_compile`.

    Raises:
        ValueError: `share_prefixes=True` with `jit_compile=True`.
    """

    def __init__(
        self, model, *, jit_compile, share_prefixes, lean_joint_threshold, joint_time_chunk
    ):
        if share_prefixes is None:
            share_prefixes = not jit_compile
        elif share_prefixes and jit_compile:
            raise ValueError(
                "share_prefixes=True needs jit_compile=False: the number of prefix rows depends "
                "on the data, which XLA cannot compile; use share_prefixes=False (whole lattices) "
                "under XLA"
            )
        self.model = model
        self.share_prefixes = bool(share_prefixes)
        self.lean_joint_threshold = lean_joint_threshold
        self.joint_time_chunk = joint_time_chunk
        # Set while the step traces its lean (True) or plain (False) branch (`lean_rows`); None
        # elsewhere.
        self._lean_rows = None

    def project_encoder(self, enc):
        """`[B, T, D]` raw encoder output → `[B, T, J]`, the joint's encoder side (once per
        utterance, shared by every sequence scored on it)."""
        return self.model.joint.project_encoder(enc)

    def logits(self, enc_side, labels, training):
        """Per replica: the student's lattice `[B, T, U+1, V]` over `labels [B, U]`."""
        joint = self.model.joint
        pred_side = joint.project_prediction(self.model.predict_labels(labels, training=training))
        return joint.combine(enc_side[:, :, None], pred_side[:, None])

    def log_probs(self, enc_side, enc_lengths, labels, label_lengths, training):
        """Per replica: full-sum `log P_S(labels|x)` `[R]` for R label rows, one lattice each.

        Args:
            enc_side: `[R, T, J]` projected encoder output (gathered per row by the caller).
            enc_lengths: `[R]`; labels: `[R, U]`; label_lengths: `[R]`.
        """
        labels = tf.cast(labels, tf.int32)
        label_lengths = tf.cast(label_lengths, tf.int32)
        joint = self.model.joint
        pred_side = joint.project_prediction(self.model.predict_labels(labels, training=training))
        if self._use_lean(enc_side, pred_side):
            return losses.rnnt_log_prob_from_joint(
                enc_side,
                pred_side,
                lambda e, p: joint.combine(e[:, :, None], p[:, None]),
                labels,
                enc_lengths,
                label_lengths,
                time_chunk=self.joint_time_chunk,
            )
        logits = joint.combine(enc_side[:, :, None], pred_side[:, None])
        return losses.rnnt_log_prob(logits, labels, enc_lengths, label_lengths)

    def _use_lean(self, enc_side, pred_side) -> bool:
        if self.lean_joint_threshold is None:
            return False
        dims = [enc_side.shape[0], enc_side.shape[1], pred_side.shape[1], self.model.vocab_size]
        if any(d is None for d in dims):
            return True
        size = 1
        for d in dims:
            size *= int(d)
        return size > self.lean_joint_threshold

    def nbest_scores(
        self, enc_side, enc_lengths, hypotheses, hypothesis_lengths, training, nbest_count=None
    ):
        """Per replica: `s_S [B, N]` full-sum scores, sharing one encoder pass per utterance.

        Args:
            enc_side: `[B, T, J]` projected encoder output; enc_lengths: `[B]`.
            hypotheses: `[B, N, U]`; hypothesis_lengths: `[B, N]`.
            training: passed to the prediction network.
            nbest_count: optional `[B]` real hypotheses per utterance. With `share_prefixes`,
                the others get no rows and score `LOG_ZERO` (-1e30) with zero gradient; without,
                they are scored like the rest. Callers mask them either way.

        The encoder output is projected once per utterance. With `share_prefixes`, the
        prediction network runs per hypothesis `[B·N, U+1, J]`, and the joint runs once per
        distinct (utterance, prefix) row `[R, T, V]` (`_shared_prefix_scores`). Without, the
        encoder side is gathered to `[B·N, T, J]` and the joint builds one lattice per hypothesis.
        """
        if self.share_prefixes:
            return self._shared_prefix_scores(
                enc_side, enc_lengths, hypotheses, hypothesis_lengths, nbest_count, training
            )
        batch, num = tf.shape(hypotheses)[0], tf.shape(hypotheses)[1]
        utt = tf.repeat(tf.range(batch), num)  # [B·N]: the utterance of each hypothesis
        rows = hypotheses.shape[1]
        enc_rows = tf.gather(enc_side, utt)
        if enc_side.shape[0] is not None and rows is not None:
            enc_rows = tf.ensure_shape(enc_rows, [enc_side.shape[0] * rows, *enc_side.shape[1:]])
        scores = self.log_probs(
            enc_rows,
            tf.gather(enc_lengths, utt),
            tf.reshape(hypotheses, [batch * num, -1]),
            tf.reshape(hypothesis_lengths, [-1]),
            training,
        )
        return tf.reshape(scores, [batch, num])

    def scores(self, enc_side, enc_lengths, labels, label_lengths, training, mask=None):
        """Per replica: `log P_S(labels|x)` `[B]`, one label sequence per utterance.

        `mask [B]` (optional bool) marks the examples whose score is used; with
        `share_prefixes` the others get no rows (score `LOG_ZERO`, zero gradient), and only the
        real label positions of the rest get joint rows.
        """
        if not self.share_prefixes:
            return self.log_probs(enc_side, enc_lengths, labels, label_lengths, training)
        count = None if mask is None else tf.cast(mask, tf.int32)
        scores = self._shared_prefix_scores(
            enc_side, enc_lengths, labels[:, None], label_lengths[:, None], count, training
        )
        return scores[:, 0]

    def _shared_prefix_scores(self, enc_side, enc_lengths, hyps, hyp_lengths, count, training):
        """`[B, N]` scores on shared prefix rows; above `lean_joint_threshold` logits `R·T·V`
        (decided at run time: R depends on the data), in time chunks (memory-lean)."""
        hyps = tf.cast(hyps, tf.int32)
        hyp_lengths = tf.cast(hyp_lengths, tf.int32)
        rows = losses.nbest_prefix_rows(hyps, hyp_lengths, count)
        batch, num, max_labels = tf.unstack(tf.shape(hyps))
        joint = self.model.joint
        # The prediction network runs per hypothesis (cheap: [B·N, U+1]); each row takes the
        # output of its owner hypothesis at its position. The joint runs only on the rows.
        pred_side = joint.project_prediction(
            self.model.predict_labels(tf.reshape(hyps, [batch * num, max_labels]), training)
        )
        node = (rows.row_utt * num + rows.row_hyp) * (max_labels + 1) + rows.row_pos
        pred_rows = tf.gather(tf.reshape(pred_side, [-1, tf.shape(pred_side)[-1]]), node)

        def shared():
            row_logits = joint.combine(tf.gather(enc_side, rows.row_utt), pred_rows[:, None, :])
            return losses.rnnt_nbest_log_prob(row_logits, rows, hyps, enc_lengths, hyp_lengths)

        def lean():
            return losses.rnnt_nbest_log_prob_from_joint(
                enc_side,
                pred_rows,
                lambda e, p: joint.combine(e, p[:, None, :]),
                rows,
                hyps,
                enc_lengths,
                hyp_lengths,
                time_chunk=self.joint_time_chunk,
            )

        if self.lean_joint_threshold is None:
            return shared()
        if self._lean_rows is not None:  # decided by the step, outside the gradient tape
            return lean() if self._lean_rows else shared()
        # Elsewhere (eager, evaluation): a run-time choice. Its gradient can only be built
        # eagerly: in a graph, the lean branch's custom gradient cannot be differentiated
        # through tf.cond (see `LossTermsTrainer.joint_path`).
        size = self._joint_size(tf.shape(rows.row_utt)[0], tf.shape(enc_side)[1])
        return tf.cond(size > self.lean_joint_threshold, lean, shared)

    def _joint_size(self, num_rows, frames):
        """`[]` int64 logits `R·T·V` of one shared-prefix joint call."""
        return tf.cast(num_rows, tf.int64) * tf.cast(frames, tf.int64) * self.model.vocab_size

    def rows_exceed_threshold(self, label_sets, frames):
        """`[]` bool: some shared-prefix joint call exceeds `lean_joint_threshold` (`R·T·V`
        logits); None when no run-time choice is needed (no shared prefix rows, no threshold, or
        nothing to score).

        Args:
            label_sets: what the trainer's `loss_terms` scores on prefix rows, a list of
                `(labels [B, N, U], lengths [B, N], count [B] or None)`.
            frames: `[]` int32 encoder frames of the batch's padded audio.
        """
        if not self.chooses_at_run_time or not label_sets:
            return None
        big = tf.constant(False)
        for labels, lengths, count in label_sets:
            rows = losses.nbest_prefix_rows(labels, lengths, count)
            big |= self._joint_size(tf.shape(rows.row_utt)[0], frames) > self.lean_joint_threshold
        return big

    @property
    def chooses_at_run_time(self) -> bool:
        """Whether the lean/shared choice is made at run time (shared prefixes and a threshold)."""
        return self.share_prefixes and self.lean_joint_threshold is not None

    @contextlib.contextmanager
    def lean_rows(self, lean: bool):
        """Within: shared prefix rows are scored lean (`True`) or plain (`False`) without a
        run-time `tf.cond` (the step traces each branch under one of these)."""
        self._lean_rows = lean
        try:
            yield
        finally:
            self._lean_rows = None
