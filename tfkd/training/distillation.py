"""Distillation trainers (METHODS.md §2–§6): hard, soft, full-sum and discriminative full-sum.

Each trainer is a `LossTermsTrainer` whose model is the *student*; it returns named per-example
terms and the base class weights, averages, clips and logs them (one TensorBoard scalar per term).

Two ways to get the teacher's outputs, chosen by what the batch holds:
- offline: the batch carries the pseudo-label fields of `make_dataset(with_nbest=True)`
  (`nbest_token_ids [B, H, U']`, `nbest_lengths [B, H]`, `teacher_scores [B, H]` full-sum,
  `nbest_count [B]`). Hard and full-sum students then need no teacher in memory.
  Soft students also read the stored soft targets when the records have them
  (`bin/pseudo_label --soft_targets`: `soft_targets [B, T, U+1, 3]`, the teacher's collapsed
  lattice log-probs on the 1-best, and `soft_target_frames [B]`) and then need no teacher either.
- online: a frozen teacher (`teacher=`, or `teacher_fn` + `teacher_dir` restored from a
  `bin/train` checkpoint) decodes each batch by beam search (width `beam_width`) and scores its
  N-best with the full-sum log-likelihood (`tfkd.teacher`, as `bin/pseudo_label` does). Soft
  distillation without stored soft targets needs it for its lattice logits.
The teacher runs per replica before the step's gradient tape (and outside its XLA cluster), with
`training=False`, under `stop_gradient`; only the student's variables are trained. How the student
scores label sequences (whole lattices, or one joint row per distinct label prefix of the N-best)
is the trainer's `scorer` (`tfkd.training.student_scoring.StudentScorer`). The batch fields and
the pseudo-label datasets are `tfkd.data.kd_batches` (names from `tfkd.data.pipeline`).

Ground truth (§6, term `rnnt_gt`): `ground_truth="flag"` (default) adds `−log P_S(y*|x)` on the
examples whose optional boolean batch field `labeled [B]` is True, and 0 elsewhere (and for every
example when the field is absent: pseudo-label records keep the true transcript for analysis, and
it must not leak into training). `"all"` treats every example as labelled, `"none"` never does.
Its weight is `loss_weights["rnnt_gt"]` (λ). `mixed_label_dataset` makes such batches: labelled
rows carry no hypotheses (`nbest_count = 0`), and every distillation term is 0 on them (hard and
soft are masked by `has_hypotheses`; full-sum and disc ignore hypotheses beyond `nbest_count`).

CTC (term `ctc`, `ctc_weight > 0`; see `tfkd.training.trainers`): a training-only head on the
student's raw encoder output (the same encoder pass as the other terms), trained towards the
ground truth on the examples `ground_truth` counts as labelled and towards the teacher's 1-best
on the others that have hypotheses; 0 on rows with neither (`ctc_targets`).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from tfkd import checkpoints, losses
from tfkd import features as features_lib
from tfkd import teacher as teacher_lib
from tfkd.data.kd_batches import (
    LABELED,
    NBEST_FIELDS,
    PSEUDO_LABEL_COMMAND,
    SOFT_TARGET_FRAMES,
    SOFT_TARGETS,
    SOFT_TARGETS_COMMAND,
    cut_nbest,
    first_best,
    fit_soft_targets,
    has_hypotheses,
    mixed_label_dataset,
    pseudo_label_dataset,
    soft_targets_reduction_factor,
)
from tfkd.training import trainers
from tfkd.training.student_scoring import StudentScorer
from tfkd.training.trainers import trim_labels

__all__ = [
    "LABELED",
    "NBEST_FIELDS",
    "PSEUDO_LABEL_COMMAND",
    "DiscriminativeFullSumTrainer",
    "DistillationTrainer",
    "FullSumDistillationTrainer",
    "HardDistillationTrainer",
    "SoftDistillationTrainer",
    "first_best",
    "mixed_label_dataset",
    "pseudo_label_dataset",
    "trim_labels",
]

_GROUND_TRUTH = ("flag", "all", "none")


class DistillationTrainer(trainers.LossTermsTrainer):
    """Shared machinery: teacher (online) or stored outputs (offline), `rnnt_gt` and `ctc`; the
    student's scoring is `self.scorer` (a `StudentScorer`).

    A method subclasses this, sets `term_names`, implements `loss_terms` (one encoder pass,
    `encode_student_outputs`; scores from `self.scorer`; `shared_terms` for `rnnt_gt` and `ctc`)
    and lists what it scores on shared prefix rows in `row_label_sets`.

    Args:
        model: the student `Transducer`.
        optimizer: see `LossTermsTrainer`.
        teacher: a built, trained teacher `Transducer` (tests, Python callers).
        teacher_fn: builds the teacher (e.g. gin `@conformer_teacher`); restored from `teacher_dir`.
        teacher_dir: the teacher's `bin/train` model directory.
        teacher_checkpoint: a checkpoint path inside it (default: its latest).
        beam_width: online teacher beam width K.
        nbest_size: hypotheses N per utterance; stored lists are cut or padded to N slots.
        max_symbols_per_frame: online teacher beam search limit.
        ground_truth: `"flag"`, `"all"` or `"none"`: which examples get `rnnt_gt` (see module).
        share_prefixes: score hypotheses on shared prefix rows (`tfkd.losses.nbest_prefix_rows`,
            `rnnt_nbest_log_prob`): one joint row `[T, V]` per distinct (utterance, label prefix)
            of the N-best instead of one lattice `[T, U+1, V]` per hypothesis, and no rows for
            padded label positions, padding hypotheses or unscored examples. Exact (same scores
            and gradients). Rows have a data-dependent count that XLA cannot compile, so `None`
            (default) means `not jit_compile`; `True` with `jit_compile=True` raises. `False`:
            whole lattices per hypothesis (static shapes, TPU).
        lean_joint_threshold: score with the memory-lean path
            (`tfkd.losses.rnnt_log_prob_from_joint`, which never holds the whole joint output)
            when one scoring call's joint output would have more than this many logits: whole
            lattices `rows·T·(U+1)·V` (unknown static shapes count as large), shared prefix rows
            `R·T·V` (decided at run time); `None` never.
        joint_time_chunk: frames per chunk of the lean path (`None`: the loss's default size).
        teacher_jit_compile: XLA-compile the online teacher pass (beam search is a while loop).
        **kwargs: see `LossTermsTrainer` (strategy, global_batch_size, loss_weights, ...).

    Raises:
        ValueError: teacher and student vocabularies differ; bad options; a trainer that needs a
            teacher has none; `share_prefixes=True` with `jit_compile=True`.
    """

    term_names = ("rnnt_gt",)
    #: The stored or online N-best must carry teacher full-sum scores.
    needs_teacher_scores = False
    #: Online teacher logits over the student's lattice (soft distillation), unless the batch
    #: has stored soft targets (`uses_stored_lattice`).
    needs_teacher_lattice = False

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        *,
        teacher: keras.Model | None = None,
        teacher_fn: Callable[[], keras.Model] | None = None,
        teacher_dir: str | None = None,
        teacher_checkpoint: str | None = None,
        beam_width: int = 4,
        nbest_size: int = 1,
        max_symbols_per_frame: int = 3,
        ground_truth: str = "flag",
        joint_time_chunk: int | None = None,
        lean_joint_threshold: int | None = 2**24,
        share_prefixes: bool | None = None,
        teacher_jit_compile: bool = False,
        **kwargs,
    ):
        super().__init__(model, optimizer, **kwargs)
        self.scorer = StudentScorer(
            model,
            jit_compile=self.jit_compile,
            share_prefixes=share_prefixes,
            lean_joint_threshold=lean_joint_threshold,
            joint_time_chunk=joint_time_chunk,
        )
        if ground_truth not in _GROUND_TRUTH:
            raise ValueError(f"ground_truth must be one of {_GROUND_TRUTH}, got {ground_truth!r}")
        if not 1 <= nbest_size <= beam_width:
            raise ValueError(f"need 1 <= nbest_size <= beam_width, got {nbest_size}, {beam_width}")
        self.beam_width = int(beam_width)
        self.nbest_size = int(nbest_size)
        self.max_symbols_per_frame = int(max_symbols_per_frame)
        self.ground_truth = ground_truth
        if teacher is None and teacher_fn is not None:
            teacher = self._restore_teacher(teacher_fn, teacher_dir, teacher_checkpoint)
        elif teacher_fn is not None:
            raise ValueError("give either teacher or teacher_fn, not both")
        self.teacher = teacher
        if teacher is not None:
            if teacher.vocab_size != model.vocab_size:
                raise ValueError(
                    f"teacher and student vocabularies differ: {teacher.vocab_size} vs "
                    f"{model.vocab_size}; distillation needs the same word-pieces"
                )
            teacher.trainable = False
        self._teacher_pass = tf.function(
            self.add_teacher_outputs, jit_compile=teacher_jit_compile, autograph=False
        )

    def _restore_teacher(self, teacher_fn, teacher_dir, checkpoint):
        if not teacher_dir and not checkpoint:
            raise ValueError("teacher_fn needs teacher_dir (the teacher's bin/train model_dir)")
        teacher = teacher_fn()
        teacher.build_by_calling(num_features=self.frontend.num_mel_bins)
        try:
            checkpoints.load_checkpoint(teacher, teacher_dir, checkpoint)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{e}: train the teacher first, e.g.\n"
                f"  bin/train --gin_file=gin/teacher.gin --model_dir={teacher_dir}"
            ) from None
        return teacher

    @property
    def trainable_variables(self) -> list:
        """The student's and its training-only heads' (`ctc_head`); never the teacher's, which
        is not part of `self.model`."""
        return self.model.trainable_variables + self.head_variables

    # ---- teacher (per replica, no gradient) -------------------------------------------------

    def add_teacher_outputs(self, batch):
        """Per replica: the batch with the teacher's N-best (and lattice logits) filled in.

        Stored N-best fields are kept (offline mode), cut or padded to `nbest_size`; missing ones
        come from the online teacher. With `needs_teacher_lattice`, adds `teacher_logits
        [B, T, U+1, V]` over the 1-best and `teacher_logit_lengths [B]`, unless the batch's stored
        soft targets are used (`uses_stored_lattice`; then the teacher does not run).
        """
        batch = dict(batch)
        have_nbest = NBEST_FIELDS[0] in batch
        lattice_done = "teacher_logits" in batch or self.uses_stored_lattice(batch)
        if have_nbest and (not self.needs_teacher_lattice or lattice_done):
            return cut_nbest(batch, self.nbest_size)  # offline, or the teacher pass already ran
        if self.teacher is None and have_nbest:
            raise ValueError(
                f"{type(self).__name__} has no teacher and the batch has no stored soft targets "
                f"({SOFT_TARGETS}): pseudo-label with soft targets, e.g.\n  "
                f"{SOFT_TARGETS_COMMAND}\nor set teacher_fn and teacher_dir (online teacher)"
            )
        if self.teacher is None:
            raise ValueError(
                f"{type(self).__name__} has no teacher and the batch has no N-best fields: read "
                "pseudo-label records with make_dataset(with_nbest=True), or set teacher_fn and "
                "teacher_dir"
            )
        enc, enc_lengths = teacher_lib.encode(
            self.teacher, self.frontend, batch["waveform"], batch["num_samples"]
        )
        if have_nbest:
            batch = cut_nbest(batch, self.nbest_size)
        else:
            batch.update(
                teacher_lib.nbest_fields(
                    self.teacher,
                    enc,
                    enc_lengths,
                    beam_width=self.beam_width,
                    nbest_size=self.nbest_size,
                    max_symbols_per_frame=self.max_symbols_per_frame,
                    # Full-sum log P_T(y|x), not the beam score (which sums only the kept
                    # alignments), when the student reads the scores.
                    full_sum=self.needs_teacher_scores,
                )
            )
        if self.needs_teacher_lattice:
            hyp, _ = first_best(batch)
            logits = teacher_lib.lattice_logits(self.teacher, enc, hyp)
            batch["teacher_logits"] = tf.stop_gradient(logits)
            batch["teacher_logit_lengths"] = enc_lengths
        return batch

    def uses_stored_lattice(self, batch) -> bool:
        """Whether `loss_terms` takes the teacher's lattice from the batch's stored targets."""
        return False

    def prepare_batch(self, batch):
        """Per replica, before the step's gradient tape and outside its XLA cluster: trims the
        labels (`label_bucket`), drops stored soft targets unless the trainer uses them, then runs
        the teacher pass (`add_teacher_outputs`)."""
        # Labels are trimmed first so that a teacher lattice covers the student's label axis.
        batch = super().prepare_batch(batch)
        if not self.needs_teacher_lattice:
            # Stored soft targets (records made with --soft_targets) are not used here: drop them
            # rather than carry a data-dependent [B, T, U+1, 3] tensor into the step.
            batch = {k: v for k, v in batch.items() if k not in (SOFT_TARGETS, SOFT_TARGET_FRAMES)}
        return self._teacher_pass(batch)

    # ---- student (per replica; scoring in `self.scorer`) --------------------------------------

    @property
    def share_prefixes(self) -> bool:
        """Whether the student scores on shared prefix rows (`StudentScorer.share_prefixes`)."""
        return self.scorer.share_prefixes

    def encode_student(self, batch, training):
        """Per replica: `(enc_side [B, T, J], enc_lengths [B])`: encoder output, projected once."""
        _, enc_side, enc_lengths = self.encode_student_outputs(batch, training)
        return enc_side, enc_lengths

    def encode_student_outputs(self, batch, training):
        """Per replica, one encoder pass: `(enc [B, T, D], enc_side [B, T, J], enc_lengths [B])`,
        the raw encoder output (for encoder-side terms such as CTC) and its joint projection."""
        feats, lengths = self.features(batch, training)
        enc, enc_lengths = self.model.encode(feats, lengths, training=training)
        return enc, self.scorer.project_encoder(enc), tf.cast(enc_lengths, tf.int32)

    def student_nbest_scores(
        self, enc_side, enc_lengths, hypotheses, hypothesis_lengths, training, nbest_count=None
    ):
        """Per replica: `s_S [B, N]` full-sum scores of an N-best (`StudentScorer.nbest_scores`)."""
        return self.scorer.nbest_scores(
            enc_side, enc_lengths, hypotheses, hypothesis_lengths, training, nbest_count
        )

    def joint_path(self, batch):
        """Per replica: the run-time choice of lean or plain shared-prefix scoring for this batch
        (`LossTermsTrainer.joint_path`), from the rows of `row_label_sets`; None when the scorer
        needs none."""
        if not self.scorer.chooses_at_run_time:
            return None
        if NBEST_FIELDS[0] not in batch:
            return None  # loss_terms raises its own error
        sets = self.row_label_sets(batch)
        if not sets:
            return None
        samples = tf.shape(batch["waveform"])[1]
        num_frames = getattr(self.frontend, "num_frames", features_lib.num_frames)
        frames = self.model.output_lengths(num_frames(samples)[None])[0]
        return self.scorer.rows_exceed_threshold(sets, frames), self.scorer.lean_rows

    def row_label_sets(self, batch):
        """Per replica: what `loss_terms` scores on shared prefix rows, as a list of
        `(labels [B, N, U], lengths [B, N], count [B] or None)`; here the `rnnt_gt` labels.
        Subclasses add theirs (it sizes the step's joint, `joint_path`)."""
        if self.ground_truth == "none" or (self.ground_truth == "flag" and LABELED not in batch):
            return []
        count = None if self.ground_truth == "all" else tf.cast(batch[LABELED], tf.int32)
        return [(batch["token_ids"][:, None], batch["label_length"][:, None], count)]

    def labeled_rows(self, batch):
        """Per replica: `[B]` bool, the examples `ground_truth` counts as labelled; None when no
        example is (`"none"`, or `"flag"` without a `labeled` field)."""
        if self.ground_truth == "none" or (self.ground_truth == "flag" and LABELED not in batch):
            return None
        if self.ground_truth == "all":
            return tf.ones_like(has_hypotheses(batch))
        return tf.cast(batch[LABELED], tf.bool)

    def ctc_targets(self, batch):
        """Per replica: CTC targets `(labels [B, U] int32, lengths [B] int32, mask [B] bool)`:
        the ground truth on `labeled_rows`, the teacher's 1-best on the others that have
        hypotheses; `mask` is False on rows with neither. Transcripts are not read when
        `labeled_rows` is None."""
        hyp, hyp_lengths = first_best(batch)
        has_hyp = has_hypotheses(batch)
        labeled = self.labeled_rows(batch)
        if labeled is None:
            return hyp, hyp_lengths, has_hyp
        truth = tf.cast(batch["token_ids"], tf.int32)
        truth_lengths = tf.cast(batch["label_length"], tf.int32)
        truth, hyp = _same_width(truth, hyp)
        return (
            tf.where(labeled[:, None], truth, hyp),
            tf.where(labeled, truth_lengths, hyp_lengths),
            labeled | has_hyp,
        )

    def shared_terms(self, batch, enc, enc_side, enc_lengths, training):
        """Per replica: the terms every distillation method has, `{"rnnt_gt": [B]}` and, with
        `ctc_weight > 0`, `"ctc": [B]`, from one encoder pass (`encode_student_outputs`)."""
        return {
            "rnnt_gt": self.ground_truth_term(batch, enc_side, enc_lengths, training),
            **self.ctc_term(batch, enc, enc_lengths),
        }

    def ctc_term(self, batch, enc, enc_lengths):
        """Per replica: `{"ctc": [B]}` of the student's raw encoder output `enc [B, T, D]`
        against `ctc_targets`, or `{}` when `ctc_weight` is 0."""
        if self.ctc_head is None:
            return {}
        labels, lengths, mask = self.ctc_targets(batch)
        return self.encoder_terms(enc, enc_lengths, labels, lengths, mask)

    def ground_truth_term(self, batch, enc_side, enc_lengths, training):
        """Per replica: `rnnt_gt [B]`, `−log P_S(y*|x)` on labelled examples, 0 elsewhere."""
        size = tf.shape(enc_side)[0]
        if self.ground_truth == "none" or (self.ground_truth == "flag" and LABELED not in batch):
            return tf.zeros([size], tf.float32)
        labeled = None if self.ground_truth == "all" else tf.cast(batch[LABELED], tf.bool)
        nll = -self.scorer.scores(
            enc_side, enc_lengths, batch["token_ids"], batch["label_length"], training, labeled
        )
        if labeled is None:
            return nll
        return tf.where(labeled, nll, 0.0)


class HardDistillationTrainer(DistillationTrainer):
    """METHODS §2: `hard = −log P_S(ŷ|x)` on the teacher's 1-best `ŷ` (plus `rnnt_gt`).

    Rows without hypotheses (`nbest_count = 0`: labelled rows of `mixed_label_dataset`) get 0.
    """

    term_names = ("hard", "rnnt_gt")

    def row_label_sets(self, batch):
        """The 1-best (on rows with hypotheses) and the `rnnt_gt` labels."""
        batch = cut_nbest(batch, self.nbest_size)
        hyp, hyp_lengths = first_best(batch)
        count = tf.cast(has_hypotheses(batch), tf.int32)
        return [(hyp[:, None], hyp_lengths[:, None], count), *super().row_label_sets(batch)]

    def loss_terms(self, batch, training):
        batch = self.add_teacher_outputs(batch)
        enc, enc_side, enc_lengths = self.encode_student_outputs(batch, training)
        hyp, hyp_lengths = first_best(batch)
        has_hyp = has_hypotheses(batch)
        hard = -self.scorer.scores(enc_side, enc_lengths, hyp, hyp_lengths, training, has_hyp)
        return {
            "hard": tf.where(has_hyp, hard, 0.0),
            **self.shared_terms(batch, enc, enc_side, enc_lengths, training),
        }


class SoftDistillationTrainer(DistillationTrainer):
    """METHODS §3: `hard + ω · soft`, the collapsed lattice KL on the 1-best's lattice.

    Needs the teacher at the student's frame rate (`soft_distillation_loss` compares node
    `(t, u)` of both lattices), either online or offline:
    - online (`teacher` or `teacher_fn` + `teacher_dir`): the teacher computes its lattice logits
      over the 1-best in every step (`soft_distillation_loss`);
    - offline (no teacher): the batch's stored soft targets (`bin/pseudo_label --soft_targets`,
      `soft_targets [B, T, U+1, 3]` and `soft_target_frames [B]`) are the teacher's collapsed
      lattice log-probs (`collapsed_soft_distillation_loss`); same value and gradient.
    A batch with stored soft targets uses them even when a teacher is loaded (unless
    `full_vocabulary`, which needs the teacher's logits). Rows without hypotheses
    (`nbest_count = 0`) get 0 in both terms.

    Args:
        shift: frames by which a non-causal teacher runs ahead (student t vs teacher t − shift).
        full_vocabulary: KL over all V classes instead of {next label, blank, rest}; needs an
            online teacher.
        pseudo_label_records: offline mode: the records' glob (gin: `%PSEUDO_LABEL_RECORDS`).
            Their `manifest.json` (`bin/pseudo_label`) must say `soft_targets` and names the
            teacher's reduction factor, checked here against the student's. Without it (or
            without a manifest) the frame counts are still checked per utterance, at the first
            batch (`trainer.build`), before any update.
        **kwargs: see `DistillationTrainer`.

    Raises:
        ValueError: teacher and student frame rates (reduction factors) differ (online: the
            teacher's; offline: the manifest's); `full_vocabulary` without a teacher; records
            whose manifest says they have no soft targets.
    """

    term_names = ("hard", "soft", "rnnt_gt")
    needs_teacher_lattice = True

    def __init__(
        self,
        model,
        optimizer,
        *,
        shift: int = 0,
        full_vocabulary=False,
        pseudo_label_records: str | None = None,
        **kwargs,
    ):
        super().__init__(model, optimizer, **kwargs)
        if self.teacher is not None:
            teacher_factor, source = self.teacher.reduction_factor, "the teacher"
        else:
            if full_vocabulary:
                raise ValueError(
                    "SoftDistillationTrainer(full_vocabulary=True) needs an online teacher "
                    "(teacher_fn and teacher_dir): stored soft targets hold only the collapsed "
                    "{next label, blank, rest} log-probs, not all V classes"
                )
            teacher_factor, source = None, ""
            if pseudo_label_records:
                teacher_factor, source = soft_targets_reduction_factor(pseudo_label_records)
        if teacher_factor is not None and teacher_factor != model.reduction_factor:
            raise ValueError(
                "soft distillation compares lattice node (t, u) of teacher and student and needs "
                f"the same frame rate, but {source} reduces frames "
                f"{teacher_factor}x and the student {model.reduction_factor}x; "
                "use full-sum distillation "
                "(FullSumDistillationTrainer), which compares no time index"
            )
        self.shift = int(shift)
        self.full_vocabulary = full_vocabulary

    def uses_stored_lattice(self, batch) -> bool:
        """Stored soft targets are used when the batch has them (not for `full_vocabulary`)."""
        return SOFT_TARGETS in batch and not self.full_vocabulary

    def loss_terms(self, batch, training):
        batch = self.add_teacher_outputs(batch)
        enc, enc_side, enc_lengths = self.encode_student_outputs(batch, training)
        hyp, hyp_lengths = first_best(batch)
        logits = self.scorer.logits(enc_side, hyp, training)
        has_hyp = has_hypotheses(batch)
        hard = losses.hard_distillation_loss(logits, hyp, enc_lengths, hyp_lengths)
        if self.uses_stored_lattice(batch):
            shape = tf.shape(logits)
            targets = fit_soft_targets(batch[SOFT_TARGETS], shape[1], shape[2])
            targets = tf.ensure_shape(targets, logits.shape[:3] + [3])
            # Rows without hypotheses store no frames; their term is 0 (masked below).
            frames = tf.cast(batch[SOFT_TARGET_FRAMES], tf.int32)
            soft = losses.collapsed_soft_distillation_loss(
                targets,
                logits,
                hyp,
                enc_lengths,
                hyp_lengths,
                shift=self.shift,
                teacher_logit_lengths=tf.where(has_hyp, frames, enc_lengths),
            )
        else:
            soft = losses.soft_distillation_loss(
                batch["teacher_logits"],
                logits,
                hyp,
                enc_lengths,
                hyp_lengths,
                shift=self.shift,
                full_vocabulary=self.full_vocabulary,
                teacher_logit_lengths=batch["teacher_logit_lengths"],
            )
        return {
            "hard": tf.where(has_hyp, hard, 0.0),
            "soft": tf.where(has_hyp, soft, 0.0),
            **self.shared_terms(batch, enc, enc_side, enc_lengths, training),
        }


class FullSumDistillationTrainer(DistillationTrainer):
    """METHODS §4: `fullsum = mean_n d(s_T(n), s_S(n))` over the teacher's N-best.

    Args:
        distance: `'squared'` (default) or `'kl'` (see `fullsum_distillation_loss`).
        length_norm: divide every score by its token count plus one.
        nbest_size: N (default 4).
        **kwargs: see `DistillationTrainer`.
    """

    term_names = ("fullsum", "rnnt_gt")
    needs_teacher_scores = True

    def __init__(
        self, model, optimizer, *, distance="squared", length_norm=False, nbest_size=4, **kwargs
    ):
        super().__init__(model, optimizer, nbest_size=nbest_size, **kwargs)
        if distance not in ("squared", "kl"):
            raise ValueError(f"distance must be 'squared' or 'kl', got {distance!r}")
        self.distance = distance
        self.length_norm = length_norm

    def row_label_sets(self, batch):
        """The N-best and the `rnnt_gt` labels."""
        batch = cut_nbest(batch, self.nbest_size)
        nbest = (batch["nbest_token_ids"], batch["nbest_lengths"], batch["nbest_count"])
        return [nbest, *super().row_label_sets(batch)]

    def sequence_scores(self, batch, training):
        """Per replica, one encoder pass: `(batch with teacher outputs, s_S [B, N], enc [B, T, D],
        enc_side [B, T, J], enc_lengths [B])`."""
        batch = self.add_teacher_outputs(batch)
        enc, enc_side, enc_lengths = self.encode_student_outputs(batch, training)
        scores = self.scorer.nbest_scores(
            enc_side,
            enc_lengths,
            batch["nbest_token_ids"],
            batch["nbest_lengths"],
            training,
            nbest_count=batch["nbest_count"],
        )
        return batch, scores, enc, enc_side, enc_lengths

    def nbest_terms(self, batch, scores):
        """Per replica: the terms over the N-best, `{"fullsum": [B]}`, from the teacher's scores
        in `batch` and the student's `scores [B, N]`. Subclasses add theirs."""
        return {
            "fullsum": losses.fullsum_distillation_loss(
                batch["teacher_scores"],
                scores,
                batch["nbest_lengths"],
                num_hyps=batch["nbest_count"],
                distance=self.distance,
                length_norm=self.length_norm,
            )
        }

    def loss_terms(self, batch, training):
        batch, scores, enc, enc_side, enc_lengths = self.sequence_scores(batch, training)
        return {
            **self.nbest_terms(batch, scores),
            **self.shared_terms(batch, enc, enc_side, enc_lengths, training),
        }


class DiscriminativeFullSumTrainer(FullSumDistillationTrainer):
    """METHODS §5: `fullsum + η · disc`, `disc = KL(q_T ‖ q_S)` over the N-best at temperature τ.

    Args:
        temperature: τ > 0.
        **kwargs: see `FullSumDistillationTrainer`; `nbest_size` must be >= 2.

    Raises:
        ValueError: `nbest_size < 2` (one hypothesis has no ranking to learn).
    """

    term_names = ("fullsum", "disc", "rnnt_gt")

    def __init__(self, model, optimizer, *, temperature=1.0, **kwargs):
        super().__init__(model, optimizer, **kwargs)
        if self.nbest_size < 2:
            raise ValueError(
                "discriminative full-sum distillation needs an N-best list with N >= 2, "
                f"got nbest_size = {self.nbest_size}"
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def nbest_terms(self, batch, scores):
        """`fullsum` (`FullSumDistillationTrainer.nbest_terms`) and `disc [B]`."""
        return {
            **super().nbest_terms(batch, scores),
            "disc": losses.discriminative_fullsum_loss(
                batch["teacher_scores"],
                scores,
                num_hyps=batch["nbest_count"],
                temperature=self.temperature,
            ),
        }


def _same_width(a, b):
    """Zero-pads two `[B, U_a]`, `[B, U_b]` label tensors to the wider one's width (static when
    both widths are: `trim_labels` cuts the transcripts and the N-best to different widths)."""
    if a.shape[1] is not None and b.shape[1] is not None:
        width = max(a.shape[1], b.shape[1])
        return tuple(tf.pad(x, [[0, 0], [0, width - x.shape[1]]]) for x in (a, b))
    width = tf.maximum(tf.shape(a)[1], tf.shape(b)[1])
    return tuple(tf.pad(x, [[0, 0], [0, width - tf.shape(x)[1]]]) for x in (a, b))
