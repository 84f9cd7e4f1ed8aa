"""Inner training loops: one optimisation step, run on every replica through `strategy.run`.

A trainer turns a batch into named per-example loss terms (`{"rnnt": [B]}` for supervised
training; `{"hard": [B], "fullsum": [B], "rnnt_gt": [B], ...}` for distillation), weights them into
a total, and applies one optimizer update. The outer loop (`tfkd.training.loop`) owns checkpoints,
summaries and intervals; trainers own only the step.

CTC auxiliary term (`ctc_weight > 0`, every trainer): `ctc = −log P_CTC(y|x)` from a training-only
head on the model's raw encoder output (`ctc_head`, a Dense layer to the vocabulary, blank 0
shared with the transducer), `tfkd.losses.ctc_loss`; 0 on rows where no CTC path fits. The head is
trained and checkpointed (`checkpoint_objects`) but is not part of the model, so evaluation and
export see the same model as without it.

Terminology: *per replica* code runs inside `strategy.run` on one replica's share of the global
batch; *host* code runs in the cross-replica context and sees reduced values.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Mapping

import keras
import tensorflow as tf

from tfkd import features as features_lib
from tfkd import losses
from tfkd.data import pipeline

NUM_EXAMPLES = "num_examples"
TOTAL = "loss"


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_number(name, value, *, minimum, integer=False, exclusive=False) -> None:
    """Host, at construction: raises unless `value` is a finite number (an int when `integer`)
    >= `minimum` (> with `exclusive`).

    Raises:
        ValueError: naming `name`; a dotted name is a gin binding (`train.num_steps`) and the
            message says to fix it.
    """
    if integer:
        right_type = _is_int(value)
    else:
        right_type = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if right_type and math.isfinite(value):
        if value > minimum or (value == minimum and not exclusive):
            return
    kind = "an integer" if integer else "a number"
    if not right_type:
        kind += f", not {type(value).__name__}"
    hint = f": fix the gin binding {name} (or the macro it references)" if "." in name else ""
    op = ">" if exclusive else ">="
    raise ValueError(f"{name} must be {op} {minimum}, got {value!r} (expected {kind}){hint}")


class LossTermsTrainer(abc.ABC):
    """Base for a step that returns named per-example loss terms and a weighted total.

    Subclasses implement `loss_terms` (per replica) and may override `trainable_variables`
    (a distillation trainer returns the student's only). Everything else — loss averaging over the
    global batch, None-gradient filtering, global-norm clipping that agrees across replicas, loss
    scaling for float16, XLA compilation and true-mean logging — lives here.

    Args:
        model: the Keras model being trained, built inside `strategy.scope()`.
        optimizer: a Keras optimizer (or `keras.optimizers.LossScaleOptimizer`) built in the same
            scope. Do not give it `clipnorm`/`global_clipnorm`: Keras would clip each replica's
            partial gradient; use `clip_norm` here instead.
        strategy: the strategy the model was built under.
        global_batch_size: examples per step summed over all replicas (the pipeline's batch).
        loss_weights: weight per term name; names not given default to 1.0. Unknown names raise.
        clip_norm: clip the global gradient norm to this value; `None` disables clipping.
        jit_compile: compile the per-replica forward and backward pass with XLA.
        frontend: waveform → features layer, `frontend(waveform [B, N], num_samples [B]) ->
            (features [B, T, F], lengths [B])`; default `tfkd.features.LogMel()`.
        spec_augment: optional `tfkd.features.SpecAugment`, applied in training steps only.
        augment_seed: base of the per-step, per-replica stateless SpecAugment seeds.
        spec_augment_start: the first step (0-based optimizer iteration) that SpecAugment masks;
            before it the features pass unmasked, so a model can fit its data first.
        label_bucket: before each step (outside its XLA cluster), cut padded label axes to the
            batch's longest sequence rounded up to a multiple of this (`trim_labels`): a static
            pipeline pads labels to `max_label_length`, and every padded label row costs a
            lattice row `[B, T, V]` in the joint. XLA then compiles at most
            `max_label_length / label_bucket` shapes per audio bucket. `None` keeps the static
            shapes (TPU).
        ctc_weight: weight of the CTC auxiliary term `ctc` (see module docstring); 0 (default)
            disables it: no head, no term, the same terms and step as before it existed.

    Raises:
        ValueError: unknown `loss_weights` names (`ctc` is weighted by `ctc_weight`), a
            non-positive batch size, `label_bucket` or `clip_norm`, a negative `ctc_weight`,
            loss weight or `spec_augment_start`.
    """

    #: The names `loss_terms` returns, in logging order. Subclasses set this.
    term_names: tuple[str, ...] = ()

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        *,
        strategy: tf.distribute.Strategy,
        global_batch_size: int,
        loss_weights: Mapping[str, float] | None = None,
        clip_norm: float | None = None,
        jit_compile: bool = True,
        frontend: keras.layers.Layer | None = None,
        spec_augment: keras.layers.Layer | None = None,
        augment_seed: int = 0,
        spec_augment_start: int = 0,
        label_bucket: int | None = None,
        ctc_weight: float = 0.0,
    ):
        name = type(self).__name__
        if "ctc" in (loss_weights or {}):
            raise ValueError("weight the CTC term with ctc_weight, not loss_weights['ctc']")
        unknown = set(loss_weights or {}) - set(self.term_names)
        if unknown:
            raise ValueError(
                f"loss_weights has unknown terms {sorted(unknown)}; "
                f"{name} returns {list(self.term_names)}"
            )
        for term, weight in (loss_weights or {}).items():
            check_number(f"{name}.loss_weights[{term!r}]", weight, minimum=0)
        check_number("global_batch_size", global_batch_size, minimum=1, integer=True)
        if label_bucket is not None and not (_is_int(label_bucket) and label_bucket >= 1):
            raise ValueError(f"label_bucket must be a positive int or None, got {label_bucket!r}")
        check_number(f"{name}.spec_augment_start", spec_augment_start, minimum=0, integer=True)
        check_number(f"{name}.ctc_weight", ctc_weight, minimum=0)
        if clip_norm is not None:
            check_number(f"{name}.clip_norm", clip_norm, minimum=0, exclusive=True)
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.global_batch_size = int(global_batch_size)
        self.loss_weights = {name: 1.0 for name in self.term_names}
        self.loss_weights.update({k: float(v) for k, v in (loss_weights or {}).items()})
        self.clip_norm = clip_norm
        self.jit_compile = jit_compile
        self.frontend = frontend if frontend is not None else features_lib.LogMel()
        self.spec_augment = spec_augment
        self.augment_seed = augment_seed
        self.spec_augment_start = int(spec_augment_start)
        self.label_bucket = label_bucket
        self.ctc_weight = float(ctc_weight)
        self.ctc_head = None
        if self.ctc_weight > 0:
            self.term_names = (*type(self).term_names, "ctc")
            self.loss_weights["ctc"] = self.ctc_weight
            # Variables are created at the first call (`build`, inside the strategy scope). The
            # model's policy: under mixed precision the head computes like the joint does.
            self.ctc_head = keras.layers.Dense(
                model.vocab_size, dtype=model.dtype_policy, name="ctc_head"
            )
        # No autograph in training, decoding or the losses: tfkd has no tensor-dependent Python
        # control flow (its loops are tf.while_loop), and converting the model, loss and
        # optimizer code costs a third of the first step's tracing (the study's student: 22 s
        # with autograph, 14 s without).
        self._grads_fn = tf.function(self._grads, jit_compile=jit_compile, autograph=False)
        # Evaluation batches are not padded to fixed shapes (a dev set must not drop its tail), so
        # XLA would recompile for nearly every batch: the eval step stays a plain graph.
        self._eval_terms_fn = tf.function(
            lambda batch: self.loss_terms(batch, training=False),
            reduce_retracing=True,
            autograph=False,
        )
        self._train_fn = None
        self._eval_fn = None

    # ---- what subclasses define -------------------------------------------------------------

    @abc.abstractmethod
    def loss_terms(self, batch: Mapping[str, tf.Tensor], training: bool) -> dict[str, tf.Tensor]:
        """Per replica: returns `{name: float32 [B_replica]}` for every name in `term_names`."""

    @property
    def trainable_variables(self) -> list:
        """The variables the optimizer updates: the model's and the training-only heads'."""
        return self.model.trainable_variables + self.head_variables

    @property
    def head_variables(self) -> list:
        """Trainable variables of the training-only heads (`ctc_head`), not part of the model."""
        return list(self.ctc_head.trainable_variables) if self.ctc_head is not None else []

    def checkpoint_objects(self) -> dict:
        """What the training checkpoint saves besides model, optimizer and step (the heads)."""
        return {"ctc_head": self.ctc_head} if self.ctc_head is not None else {}

    def prepare_batch(self, batch: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
        """Per replica, before the gradient tape and outside XLA: trims padded labels
        (`label_bucket`); subclasses add e.g. a frozen teacher's outputs."""
        if self.label_bucket is None:
            return batch
        return trim_labels(batch, self.label_bucket)

    def build(self, batch: Mapping[str, tf.Tensor]) -> None:
        """Creates model and optimizer variables from one real batch (call inside the scope).

        Subclassed Keras models must be called on real-shaped inputs; `build(shape)` alone can
        leave the optimizer unable to find variables.
        """
        self.loss_terms(self.prepare_batch(batch), training=False)
        self.optimizer.build(self.trainable_variables)

    # ---- per replica ------------------------------------------------------------------------

    def features(self, batch, training: bool):
        """Per replica: `(features float32 [B, T, F], lengths int32 [B])` of a pipeline batch.

        SpecAugment draws stateless randomness from (step, replica id): replicas mask differently,
        and a resumed run repeats the masks of the run it replaces.
        """
        feats, lengths = self.frontend(batch["waveform"], batch["num_samples"])
        if training and self.spec_augment is not None:
            ctx = tf.distribute.get_replica_context()
            replica = tf.cast(ctx.replica_id_in_sync_group if ctx else 0, tf.int64)
            step = tf.cast(self.optimizer.iterations, tf.int64)
            seed = tf.stack([self.augment_seed + step, replica])
            masked = self.spec_augment(feats, lengths, training=True, seed=seed)
            if self.spec_augment_start > 0:
                masked = tf.where(step >= self.spec_augment_start, masked, feats)
            feats = masked
        return feats, lengths

    def encoder_terms(self, enc, enc_lengths, labels, label_lengths, mask=None) -> dict:
        """Per replica: the encoder-side auxiliary terms, `{"ctc": float32 [B]}`, or `{}` when
        `ctc_weight` is 0.

        Args:
            enc: `[B, T, D]` the model's raw encoder output (before the joint's projection).
            enc_lengths: `[B]` valid encoder frames.
            labels: `[B, U]` CTC targets (blank excluded, padded); label_lengths: `[B]`.
            mask: optional bool `[B]`: rows that have a target; the others get 0 and no
                gradient, and their labels are not read.
        """
        if self.ctc_head is None:
            return {}
        label_lengths = tf.cast(label_lengths, tf.int32)
        if mask is not None:
            label_lengths = tf.where(mask, label_lengths, 0)
        logits = tf.cast(self.ctc_head(enc), tf.float32)
        ctc = losses.ctc_loss(logits, labels, enc_lengths, label_lengths)
        if mask is not None:
            ctc = tf.where(mask, ctc, 0.0)
        return {"ctc": ctc}

    def weighted_total(self, terms: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Per replica: `sum_k w_k * terms[k]`, float32 [B_replica]."""
        total = None
        for name in self.term_names:
            weighted = self.loss_weights[name] * tf.cast(terms[name], tf.float32)
            total = weighted if total is None else total + weighted
        return total

    def joint_path(self, batch):
        """Per replica, in the compiled step before the gradient tape: a run-time choice between
        two ways of computing the same loss terms, or None (default: one way, one pass).

        Returns `(lean, use)`: `lean` a `[]` bool tensor computed from `batch`, and `use(flag)` a
        context manager under which `loss_terms` traces the memory-lean (`flag=True`) or plain
        (`False`) joint path. The step then traces its forward and backward pass once per path
        and runs the one `lean` picks: a `tf.cond` inside the gradient tape could not be
        differentiated (cond_v2 cannot capture the variables that a lean path's custom gradient
        reads). Distillation trainers choose shared-prefix scoring in time chunks this way.
        """
        return None

    def _grads(self, batch):
        path = self.joint_path(batch)
        if path is None:
            return self._tape_grads(batch)
        lean, use = path
        none_grads = []

        def branch(flag):
            def run():
                with use(flag):
                    sums, grads = self._tape_grads(batch)
                # tf.cond cannot return None: unconnected variables get a placeholder zero.
                none_grads.append([g is None for g in grads])
                grads = [
                    tf.zeros(v.shape, v.dtype) if g is None else g
                    for g, v in zip(grads, self.trainable_variables, strict=True)
                ]
                return sums, grads

            return run

        sums, grads = tf.cond(lean, branch(True), branch(False))
        if none_grads[0] != none_grads[-1]:
            raise ValueError("the lean and shared scoring paths train different variables")
        return sums, [None if none else g for none, g in zip(none_grads[0], grads, strict=True)]

    def _tape_grads(self, batch):
        with tf.GradientTape() as tape:
            terms = self.loss_terms(batch, training=True)
            missing = set(self.term_names) - set(terms)
            if missing:
                raise ValueError(f"{type(self).__name__}.loss_terms did not return {missing}")
            total = self.weighted_total(terms)
            # Sum over this replica's examples, divide by the *global* batch: the optimizer
            # all-reduces gradients with SUM across replicas, so the applied gradient is that of
            # the mean over the whole global batch — the same update one device would make on the
            # same batch. Dividing by the per-replica batch would multiply it by the replica count.
            loss = tf.reduce_sum(total) / self.global_batch_size
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
                loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(loss, self.trainable_variables)
        sums = {name: tf.reduce_sum(tf.cast(terms[name], tf.float32)) for name in self.term_names}
        sums[TOTAL] = tf.reduce_sum(total)
        sums[NUM_EXAMPLES] = tf.cast(tf.shape(total)[0], tf.float32)
        return sums, grads

    def _loss_scale(self):
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            return tf.cast(self.optimizer.dynamic_scale, tf.float32)
        return tf.constant(1.0)

    def _clip(self, grads):
        """Per replica: scales local gradients so that their cross-replica SUM has norm <= clip.

        The norm must be that of the summed (global) gradient, identical on every replica; Keras'
        own `global_clipnorm` would clip each replica's partial gradient before the all-reduce.
        """
        summed = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        norm = tf.linalg.global_norm(summed) / self._loss_scale()
        factor = tf.minimum(1.0, self.clip_norm / tf.maximum(norm, 1e-12))
        # A non-finite norm (float16 overflow) must reach LossScaleOptimizer as non-finite on every
        # replica, so that all of them skip the step together.
        factor = tf.where(tf.math.is_finite(norm), factor, float("nan"))
        return [g * tf.cast(factor, g.dtype) for g in grads], norm

    def _replica_train_step(self, batch):
        sums, grads = self._grads_fn(self.prepare_batch(batch))
        pairs = [
            (g, v) for g, v in zip(grads, self.trainable_variables, strict=True) if g is not None
        ]
        if not pairs:
            raise ValueError("no trainable variable receives a gradient from the loss")
        # Unused heads give None gradients; Keras would warn on every step.
        grads, variables = [g for g, _ in pairs], [v for _, v in pairs]
        if self.clip_norm is not None:
            grads, norm = self._clip(grads)
        else:
            norm = tf.linalg.global_norm(grads) / self._loss_scale()  # this replica's share only
        self.optimizer.apply(grads, variables)
        return sums, norm

    # ---- host -------------------------------------------------------------------------------

    def train_step(self, iterator) -> dict[str, tf.Tensor]:
        """Host: runs one step on the next global batch of a distributed iterator.

        Returns:
            True means over the global batch: one scalar per term name, `loss` (the weighted
            total), and `grad_norm` (the global norm before clipping; with `clip_norm=None` and
            several replicas, the first replica's share).
        """
        if self._train_fn is None:

            @tf.function(autograph=False)
            def train_fn(iterator):
                sums, norm = self.strategy.run(self._replica_train_step, args=(next(iterator),))
                sums = _reduce_sum(self.strategy, sums)
                norm = self.strategy.experimental_local_results(norm)[0]
                return sums, norm

            self._train_fn = train_fn
        sums, norm = self._train_fn(iterator)
        means = _true_means(sums)
        means["grad_norm"] = norm
        return means

    def eval_sums(self, batch) -> dict[str, tf.Tensor]:
        """Host: summed terms (plus `num_examples`) on one distributed batch, without updates."""
        if self._eval_fn is None:

            @tf.function(autograph=False)
            def eval_fn(batch):
                def replica_fn(batch):
                    terms = self._eval_terms_fn(self.prepare_batch(batch))
                    sums = {k: tf.reduce_sum(tf.cast(terms[k], tf.float32)) for k in terms}
                    total = self.weighted_total(terms)
                    sums[TOTAL] = tf.reduce_sum(total)
                    sums[NUM_EXAMPLES] = tf.cast(tf.shape(total)[0], tf.float32)
                    return sums

                return _reduce_sum(self.strategy, self.strategy.run(replica_fn, args=(batch,)))

            self._eval_fn = eval_fn
        return self._eval_fn(batch)

    def evaluate(self, dataset, max_batches: int | None = None) -> dict[str, float]:
        """Host: true means of every term over a distributed dataset (or its first batches)."""
        totals: dict[str, float] = {}
        for i, batch in enumerate(dataset):
            if max_batches is not None and i >= max_batches:
                break
            for k, v in self.eval_sums(batch).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        if not totals:
            return {}
        n = max(totals.pop(NUM_EXAMPLES), 1.0)
        return {k: v / n for k, v in totals.items()}


def trim_labels(batch: Mapping[str, tf.Tensor], bucket: int) -> dict[str, tf.Tensor]:
    """Cuts padded label axes to the longest sequence of the batch, rounded up to `bucket`.

    The fields are the pipeline's (`tfkd.data.pipeline`): each label field of `LABEL_FIELDS`
    (`token_ids [B, U]`, `nbest_token_ids [B, H, U]`) by its own lengths, and the label-node
    axis of each field of `LABEL_NODE_FIELDS` (stored soft targets `soft_targets [B, T, U+1, 3]`,
    hypothesis 0's lattice) to the U + 1 nodes of the trimmed label field it follows, as the
    student's lattice over the trimmed 1-best has. The result has a data-dependent size, so call
    it outside XLA-compiled code.
    """
    batch = dict(batch)
    for ids, lengths in pipeline.LABEL_FIELDS:
        if ids not in batch:
            continue
        longest = tf.reduce_max(tf.cast(batch[lengths], tf.int32))
        keep = tf.minimum((longest + bucket - 1) // bucket * bucket, tf.shape(batch[ids])[-1])
        batch[ids] = batch[ids][..., : tf.maximum(keep, 1)]
    for field, follows in pipeline.LABEL_NODE_FIELDS:
        if field in batch and follows in batch:
            nodes = tf.shape(batch[follows])[-1] + 1
            batch[field] = batch[field][:, :, :nodes]
    return batch


def _reduce_sum(strategy, per_replica: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    # One reduce per value: MultiWorkerMirroredStrategy.reduce does not take nested structures.
    return {
        k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()
    }


def _true_means(sums: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    # Sums over every replica divided by the number of examples they saw: a true mean, not the
    # per-replica fraction `sum / global_batch` that a Keras-style metric would report.
    n = tf.maximum(sums[NUM_EXAMPLES], 1.0)
    return {k: v / n for k, v in sums.items() if k != NUM_EXAMPLES}


class SupervisedTrainer(LossTermsTrainer):
    """RNN-T training on ground-truth transcripts: `rnnt` = −log P(y* | x), plus `ctc` on the
    same transcripts when `ctc_weight > 0` (one encoder pass for both).

    Args:
        fastemit_lambda: FastEmit regulariser weight passed to the loss.
        joint_time_chunk: when set, compute the loss from encoder and prediction outputs in time
            chunks of this many frames (`rnnt_loss_from_joint`) so that the whole
            `[B, T, U+1, V]` joint tensor never exists at once (FastEmit is not applied there).
        **kwargs: see `LossTermsTrainer`.
    """

    term_names = ("rnnt",)

    def __init__(
        self, model, optimizer, *, fastemit_lambda: float = 0.0, joint_time_chunk=None, **kwargs
    ):
        # λ < 0 would scale the label terms' gradient by 1 + λ <= 0 (λ = -1 zeroes the loss).
        check_number(f"{type(self).__name__}.fastemit_lambda", fastemit_lambda, minimum=0)
        super().__init__(model, optimizer, **kwargs)
        self.fastemit_lambda = fastemit_lambda
        self.joint_time_chunk = joint_time_chunk

    def loss_terms(self, batch, training):
        features, lengths = self.features(batch, training)
        enc, enc_lengths = self.model.encode(features, lengths, training=training)
        labels, label_lengths = batch["token_ids"], batch["label_length"]
        loss = rnnt_from_encoder(
            self.model,
            enc,
            enc_lengths,
            labels,
            label_lengths,
            training=training,
            fastemit_lambda=self.fastemit_lambda,
            joint_time_chunk=self.joint_time_chunk,
        )
        return {"rnnt": loss, **self.encoder_terms(enc, enc_lengths, labels, label_lengths)}


def rnnt_per_example(
    model,
    features,
    feature_lengths,
    labels,
    label_lengths,
    *,
    training,
    fastemit_lambda=0.0,
    joint_time_chunk=None,
) -> tf.Tensor:
    """Per replica: float32 [B] RNN-T loss −log P(labels | features) under a `Transducer`.

    Args:
        features: float [B, T, F]; feature_lengths: int [B].
        labels: int32 [B, U] (blank excluded, zero padded); label_lengths: int [B].
        training, fastemit_lambda, joint_time_chunk: see `rnnt_from_encoder`.
    """
    enc, enc_lengths = model.encode(features, feature_lengths, training=training)
    return rnnt_from_encoder(
        model,
        enc,
        enc_lengths,
        labels,
        label_lengths,
        training=training,
        fastemit_lambda=fastemit_lambda,
        joint_time_chunk=joint_time_chunk,
    )


def rnnt_from_encoder(
    model,
    enc,
    enc_lengths,
    labels,
    label_lengths,
    *,
    training,
    fastemit_lambda=0.0,
    joint_time_chunk=None,
) -> tf.Tensor:
    """Per replica: float32 [B] RNN-T loss from the encoder output `model.encode` gave.

    Args:
        enc: [B, T, D] raw encoder output; enc_lengths: int [B].
        labels: int32 [B, U] (blank excluded, zero padded); label_lengths: int [B].
        training: passed to the prediction network and joint.
        fastemit_lambda: FastEmit weight (plain path only).
        joint_time_chunk: when set, the memory-lean path (`rnnt_loss_from_joint`).

    The plain path's logits `model.joint(enc, model.predict_labels(labels))` are those of
    `model(...)`, cast to float32 so that mixed-precision models keep a float32 loss.
    """
    label_lengths = tf.cast(label_lengths, tf.int32)
    pred = model.predict_labels(labels, training=training)
    if joint_time_chunk:
        return losses.rnnt_loss_from_joint(
            enc,
            pred,
            lambda e, p: tf.cast(model.joint(e, p, training=training), tf.float32),
            labels,
            enc_lengths,
            label_lengths,
            time_chunk=joint_time_chunk,
        )
    logits = model.joint(enc, pred, training=training)
    return losses.rnnt_loss(
        tf.cast(logits, tf.float32),
        labels,
        enc_lengths,
        label_lengths,
        fastemit_lambda=fastemit_lambda,
    )
