"""How a distillation trainer's student scores label sequences: full-sum `log P_S(y|x)`.

Three ways, the same values and gradients:
- whole lattices: one `[T, U+1, V]` joint output per label sequence (`student_log_probs`),
  memory-lean (`tfkd.losses.rnnt_log_prob_from_joint`, time chunks) above `lean_joint_threshold`
  logits. Static shapes: the path for XLA (TPU);
- shared prefix rows (`share_prefixes`, the default without XLA): one joint row `[T, V]` per
  distinct (utterance, label prefix) of the sequences scored together (an N-best list, or one
  sequence per utterance), `tfkd.losses.rnnt_nbest_log_prob`; beam N-best lists share long
  prefixes, and padded label positions get no rows;
- shared prefix rows in time chunks (`tfkd.losses.rnnt_nbest_log_prob_from_joint`) when the rows
  of a step exceed `lean_joint_threshold` logits `R·T·V`. R depends on the data, so this choice
  is made per step at run time, outside the gradient tape (`_grads`).
Everything here runs per replica.
"""

from __future__ import annotations

import tensorflow as tf

from tfkd import features, losses
from tfkd.training.kd_batches import NBEST_FIELDS


class StudentScoring:
    """Mixin for a `LossTermsTrainer` (listed before it): student scoring of label sequences.

    Subclasses call `init_scoring` and list what `loss_terms` scores on prefix rows in
    `row_label_sets`.
    """

    def init_scoring(self, share_prefixes, lean_joint_threshold, joint_time_chunk):
        """Options (see `DistillationTrainer`); `share_prefixes=None`: `not self.jit_compile`.

        Raises:
            ValueError: `share_prefixes=True` with `jit_compile=True`.
        """
        if share_prefixes is None:
            share_prefixes = not self.jit_compile
        elif share_prefixes and self.jit_compile:
            raise ValueError(
                "share_prefixes=True needs jit_compile=False: the number of prefix rows depends "
                "on the data, which XLA cannot compile; use share_prefixes=False (whole lattices) "
                "under XLA"
            )
        self.share_prefixes = bool(share_prefixes)
        self.lean_joint_threshold = lean_joint_threshold
        self.joint_time_chunk = joint_time_chunk
        # Set while `_grads` traces its lean (True) or plain (False) branch; None elsewhere.
        self._lean_rows = None

    def row_label_sets(self, batch):
        """Per replica: what `loss_terms` scores on shared prefix rows, as a list of
        `(labels [B, N, U], lengths [B, N], count [B] or None)`."""
        return []

    def encode_student(self, batch, training):
        """Per replica: `(enc_side [B, T, J], enc_lengths [B])`: encoder output, projected once."""
        _, enc_side, enc_lengths = self.encode_student_outputs(batch, training)
        return enc_side, enc_lengths

    def encode_student_outputs(self, batch, training):
        """Per replica, one encoder pass: `(enc [B, T, D], enc_side [B, T, J], enc_lengths [B])`,
        the raw encoder output (for encoder-side terms such as CTC) and its joint projection."""
        feats, lengths = self.features(batch, training)
        enc, enc_lengths = self.model.encode(feats, lengths, training=training)
        return enc, self.model.joint.project_encoder(enc), tf.cast(enc_lengths, tf.int32)

    def student_logits(self, enc_side, labels, training):
        """Per replica: the student's lattice `[B, T, U+1, V]` over `labels [B, U]`."""
        joint = self.model.joint
        pred_side = joint.project_prediction(self.model.predict_labels(labels, training=training))
        return joint.combine(enc_side[:, :, None], pred_side[:, None])

    def student_log_probs(self, enc_side, enc_lengths, labels, label_lengths, training):
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

    def student_nbest_scores(
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
        scores = self.student_log_probs(
            enc_rows,
            tf.gather(enc_lengths, utt),
            tf.reshape(hypotheses, [batch * num, -1]),
            tf.reshape(hypothesis_lengths, [-1]),
            training,
        )
        return tf.reshape(scores, [batch, num])

    def student_scores(self, enc_side, enc_lengths, labels, label_lengths, training, mask=None):
        """Per replica: `log P_S(labels|x)` `[B]`, one label sequence per utterance.

        `mask [B]` (optional bool) marks the examples whose score is used; with
        `share_prefixes` the others get no rows (score `LOG_ZERO`, zero gradient), and only the
        real label positions of the rest get joint rows.
        """
        if not self.share_prefixes:
            return self.student_log_probs(enc_side, enc_lengths, labels, label_lengths, training)
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
        if self._lean_rows is not None:  # decided by `_grads`, outside the gradient tape
            return lean() if self._lean_rows else shared()
        # Elsewhere (eager, evaluation): a run-time choice. Its gradient can only be built
        # eagerly: in a graph, the lean branch's custom gradient cannot be differentiated
        # through tf.cond (see `_grads`).
        size = self._joint_size(tf.shape(rows.row_utt)[0], tf.shape(enc_side)[1])
        return tf.cond(size > self.lean_joint_threshold, lean, shared)

    def _joint_size(self, num_rows, frames):
        """`[]` int64 logits `R·T·V` of one shared-prefix joint call."""
        return tf.cast(num_rows, tf.int64) * tf.cast(frames, tf.int64) * self.model.vocab_size

    def _grads(self, batch):
        """`LossTermsTrainer._grads`, with the memory-lean choice of shared prefix scoring made
        per step *outside* the gradient tape.

        Rows have a data-dependent count R, so whether some joint call exceeds
        `lean_joint_threshold` (`R·T·V` logits) is known only at run time. A `tf.cond` inside the
        tape cannot be differentiated here (cond_v2 cannot capture the variables that the lean
        path's custom gradient reads), so the whole forward and backward pass is traced twice,
        once per path, and a `tf.cond` on the rows of this batch runs one of them.
        """
        big = self._rows_exceed_threshold(batch)
        parent = super()._grads
        if big is None:
            return parent(batch)
        none_grads = []

        def branch(lean):
            def run():
                self._lean_rows = lean
                try:
                    sums, grads = parent(batch)
                finally:
                    self._lean_rows = None
                # tf.cond cannot return None: unconnected variables get a placeholder zero.
                none_grads.append([g is None for g in grads])
                grads = [
                    tf.zeros(v.shape, v.dtype) if g is None else g
                    for g, v in zip(grads, self.trainable_variables, strict=True)
                ]
                return sums, grads

            return run

        sums, grads = tf.cond(big, branch(True), branch(False))
        if none_grads[0] != none_grads[-1]:
            raise ValueError("the lean and shared scoring paths train different variables")
        return sums, [None if none else g for none, g in zip(none_grads[0], grads, strict=True)]

    def _rows_exceed_threshold(self, batch):
        """`[]` bool: some shared-prefix joint call of this batch exceeds `lean_joint_threshold`;
        None when no choice is needed (no shared prefix rows, or no threshold)."""
        if not self.share_prefixes or self.lean_joint_threshold is None:
            return None
        if NBEST_FIELDS[0] not in batch:
            return None  # loss_terms raises its own error
        sets = self.row_label_sets(batch)
        if not sets:
            return None
        samples = tf.shape(batch["waveform"])[1]
        num_frames = getattr(self.frontend, "num_frames", features.num_frames)
        frames = self.model.output_lengths(num_frames(samples)[None])[0]
        big = tf.constant(False)
        for labels, lengths, count in sets:
            rows = losses.nbest_prefix_rows(labels, lengths, count)
            big |= self._joint_size(tf.shape(rows.row_utt)[0], frames) > self.lean_joint_threshold
        return big
