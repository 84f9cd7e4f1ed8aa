"""The outer training loop: `train()`, the root every experiment runs through.

`train` owns what happens between steps — strategy, building, checkpoints, resumption,
summaries, periodic evaluation and the progress bar. The step itself belongs to a trainer
(`tfkd.training.trainers`). gin configures `train`'s arguments (see `tfkd.config`); this module
reads gin only to record the operative configuration.

Preemption safety: a checkpoint becomes visible only when `CheckpointManager` rewrites the
`checkpoint` state file, which TF does by writing a temporary file and renaming it; a process killed
at any moment therefore leaves the previous checkpoint as the latest one. Half-written files of the
interrupted save (`ckpt-N_temp/`, `ckpt-N.*` not listed in the state file) are removed on restart.
The step counter is a checkpointed variable, so a resumed run continues from the checkpoint's step.

Learning curve: every periodic evaluation also appends a line to `eval/history.jsonl` (step,
training seconds and CPU seconds without evaluation, the training terms, the evaluation values;
`tfkd.training.history`), continued across resumes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping

import gin
import keras
import tensorflow as tf
import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from tfkd.data import reading
from tfkd.training import history, trainers
from tfkd.training import strategy as strategy_lib


class EmptyDatasetError(RuntimeError):
    """The training dataset yields no batch (nothing matched, or everything was filtered)."""


log = logging.getLogger("tfkd.train")

CHECKPOINT_PREFIX = "ckpt"
OPERATIVE_CONFIG = "operative_config.gin"
_MIXED_POLICIES = (None, "float32", "mixed_bfloat16", "mixed_float16")
RESUME_DATA = ("reseed", "replay")


def train(
    model_dir: str,
    *,
    model_fn: Callable[[], keras.Model],
    train_dataset_fn: Callable[..., tf.data.Dataset],
    global_batch_size: int,
    num_steps: int,
    trainer_fn: Callable[..., trainers.LossTermsTrainer] = trainers.SupervisedTrainer,
    optimizer_fn: Callable[[], keras.optimizers.Optimizer] = keras.optimizers.Adam,
    strategy: str = "default",
    tpu_address: str | None = None,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 3,
    summary_every: int = 100,
    eval_every: int = 0,
    eval_fn: Callable[[trainers.LossTermsTrainer], Mapping[str, float]] | None = None,
    mixed_precision: str | None = None,
    seed: int = 0,
    resume_data: str = "reseed",
    progress: bool = True,
) -> dict[str, float]:
    """Trains until the checkpointed step reaches `num_steps`, resuming from `model_dir`.

    Args:
        model_dir: checkpoints, TensorBoard events (`train/`, `eval/`) and `operative_config.gin`.
        model_fn: builds the (unbuilt) model; called inside `strategy.scope()`.
        train_dataset_fn: `fn(input_context=..., seed=...) -> tf.data.Dataset` of per-replica
            batches (`tf.distribute.InputContext.get_per_replica_batch_size` of the global batch),
            repeating forever. With `resume_data="reseed"`, `seed` changes on every resume (see
            below).
        global_batch_size: examples per step over all replicas; losses are averaged over it.
        num_steps: the final step count (not the number of steps of this invocation).
        trainer_fn: `fn(model, optimizer, strategy=, global_batch_size=) -> LossTermsTrainer`,
            called inside the scope (a distillation trainer may build its teacher there).
        optimizer_fn: builds the optimizer, called inside the scope.
        strategy: `tfkd.training.strategy.make_strategy` kind.
        tpu_address: for `strategy="tpu"`.
        checkpoint_every, summary_every, eval_every: intervals in steps (0 disables evaluation).
        keep_checkpoints: how many recent checkpoints the manager keeps.
        eval_fn: `fn(trainer) -> {name: value}` on the host, e.g. `{"dev/wer": 23.1}`; written to
            the `eval/` TensorBoard run and to `eval/history.jsonl` at `eval_every` and at the
            end. Names must differ from the training terms (`loss`, ...) in the history record.
        mixed_precision: `None`/`"float32"`, `"mixed_bfloat16"` or `"mixed_float16"` (compute
            dtype; variables and losses stay float32; float16 adds dynamic loss scaling).
        seed: base seed for weights and data order.
        resume_data: how a resumed run gets its data (below): `"reseed"` or `"replay"`.
        progress: show a tqdm progress bar on the chief.

    Returns:
        The last logged training means (term names, `loss`, `grad_norm`, `learning_rate`).

    Raises:
        ValueError: before any work, naming the gin binding (`train.num_steps`): a count or
            interval that is not a positive integer (`eval_every`, `seed`: >= 0), an unknown
            `mixed_precision` or `resume_data`.
        EmptyDatasetError: the training dataset yields no batch.

    Data order after a resume: a `tf.data` position cannot be checkpointed cheaply for shuffled
    audio (the iterator's state holds its shuffle buffer). `"reseed"` rebuilds the pipeline of a
    run resumed at step `s` with seed `seed + s`: a fresh, reproducible shuffle, at no cost, but
    the batches after `s` depend on where the run was stopped. `"replay"` rebuilds it with `seed`
    and skips `s` batches per replica, so that step `s + 1` reads the batch an uninterrupted run
    reads there: with a deterministic pipeline (`make_dataset(deterministic=True)`) the resumed
    run sees exactly the uninterrupted run's batches, and its results do not depend on where it
    was stopped. Skipping still reads and batches those records (about 11 ms a batch for the
    study's students, sharing the slower machine type's 2 cores with two jobs: 90 s at step
    8,000), so large runs keep `"reseed"`. Random layers (dropout, SpecAugment) are not replayed.
    """
    # Before any work: `num_steps = -5` would otherwise "finish" at once, 'four' fail much later.
    for name, value, minimum in (
        ("num_steps", num_steps, 1),
        ("global_batch_size", global_batch_size, 1),
        ("checkpoint_every", checkpoint_every, 1),
        ("keep_checkpoints", keep_checkpoints, 1),
        ("summary_every", summary_every, 1),
        ("eval_every", eval_every, 0),
        ("seed", seed, 0),
    ):
        trainers.check_number(f"train.{name}", value, minimum=minimum, integer=True)
    if not isinstance(model_dir, str | os.PathLike) or not str(model_dir):
        raise ValueError(f"train.model_dir must be a non-empty path, got {model_dir!r}")
    if mixed_precision not in _MIXED_POLICIES:
        raise ValueError(f"mixed_precision must be one of {_MIXED_POLICIES}")
    if resume_data not in RESUME_DATA:
        raise ValueError(f"train.resume_data must be one of {RESUME_DATA}, got {resume_data!r}")
    strat = strategy_lib.make_strategy(strategy, tpu_address=tpu_address)
    chief = strategy_lib.is_chief(strat)
    if chief:
        tf.io.gfile.makedirs(model_dir)
        _remove_partial_checkpoints(model_dir)
    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_dtype_policy(mixed_precision or "float32")
    try:
        with strat.scope():
            model = model_fn()
            optimizer = optimizer_fn()
            if mixed_precision == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            trainer = trainer_fn(
                model, optimizer, strategy=strat, global_batch_size=global_batch_size
            )
            step = tf.Variable(
                0,
                dtype=tf.int64,
                trainable=False,
                name="global_step",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
    finally:
        # Layers are built; later code (evaluation, other runs in this process) sees float32.
        keras.mixed_precision.set_dtype_policy("float32")

    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=optimizer, step=step, **trainer.checkpoint_objects()
    )
    ckpt_dir = model_dir if chief else _worker_temp_dir(model_dir, strat)
    manager = tf.train.CheckpointManager(
        checkpoint, ckpt_dir, max_to_keep=keep_checkpoints, checkpoint_name=CHECKPOINT_PREFIX
    )
    # Resume point is decided before building so that the data seed is known.
    latest = tf.train.latest_checkpoint(model_dir)
    resume_step = _step_of(latest) if latest else 0

    def dataset_fn(input_context):
        if resume_data == "reseed":
            return train_dataset_fn(input_context=input_context, seed=seed + resume_step)
        # Every step takes one batch per replica this pipeline feeds.
        per_step = input_context.num_replicas_in_sync // input_context.num_input_pipelines
        dataset = train_dataset_fn(input_context=input_context, seed=seed)
        return dataset.skip(resume_step * per_step)

    dataset = strat.distribute_datasets_from_function(dataset_fn)
    iterator = iter(dataset)
    t_first = time.time()
    try:
        first_batch = next(iterator)
    except (StopIteration, tf.errors.OutOfRangeError):
        if resume_data == "replay" and resume_step:
            raise EmptyDatasetError(
                f"the training dataset ends before step {resume_step + 1}, where "
                f"train.resume_data = 'replay' resumes {model_dir}: make it repeat "
                "(make_dataset.repeat = True)"
            ) from None
        raise EmptyDatasetError(
            "the training dataset is empty: every record was filtered out or none matched. "
            "Check the file pattern and the max_duration_s / max_label_length filters "
            "(pseudo-labels from a weak teacher can be longer than max_label_length)."
        ) from None
    if resume_data == "replay" and resume_step:
        log.info(
            "replayed the data of steps 1-%d in %.1f s (train.resume_data = 'replay')",
            resume_step,
            time.time() - t_first,
        )
    _build(trainer, strat, first_batch)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        log.info("resumed from %s at step %d", latest, int(step.numpy()))
        if int(step.numpy()) != resume_step:
            raise RuntimeError(f"{latest} holds step {int(step.numpy())}, not {resume_step}")
    else:
        log.info("no checkpoint in %s: starting from step 0", model_dir)

    writer = tf.summary.create_file_writer(os.path.join(model_dir, "train")) if chief else None
    eval_writer = tf.summary.create_file_writer(os.path.join(model_dir, "eval")) if chief else None
    # Records after the resumed step describe lost weights; the kept ones carry the time counts.
    past = history.resume_history(model_dir, resume_step) if chief else []
    bar = tqdm.tqdm(
        total=num_steps,
        initial=int(step.numpy()),
        disable=not (progress and chief),
        dynamic_ncols=True,
        unit="step",
    )
    last: dict[str, float] = {}
    accum: dict[str, float] = {}
    n_accum = 0
    config_written = False
    t0, step0 = time.time(), int(step.numpy())
    clock = history.TrainingClock.continuing(past)
    # Log lines go through tqdm.write, so they do not tear the progress bar.
    with logging_redirect_tqdm():
        while int(step.numpy()) < num_steps:
            means = trainer.train_step(iterator)
            step.assign_add(1)
            current = int(step.numpy())
            for k, v in means.items():
                accum[k] = accum.get(k, 0.0) + float(v)
            n_accum += 1
            bar.update(1)
            if not config_written:
                # After the first step every configurable that training calls has been called.
                _write_operative_config(model_dir, writer, current, chief)
                config_written = True
            if current % summary_every == 0 or current == num_steps:
                last = {k: v / n_accum for k, v in accum.items()}
                last["learning_rate"] = _learning_rate(optimizer, current - 1)
                last["steps_per_second"] = (current - step0) / max(time.time() - t0, 1e-9)
                # Bad records skipped so far (skip_bad_records): in the log line and TensorBoard.
                if reading.skipped_records() is not None:
                    last["skipped_records"] = reading.skipped_records()
                accum, n_accum = {}, 0
                _write_scalars(writer, last, current)
                bar.set_postfix(loss=f"{last[trainers.TOTAL]:.3f}", refresh=False)
                log.info("step %d: %s", current, _fmt(last))
            if current % checkpoint_every == 0 or current == num_steps:
                path = manager.save(checkpoint_number=current)
                log.info("saved %s", path if chief else f"worker checkpoint at step {current}")
            if (
                eval_fn is not None
                and eval_every
                and (current % eval_every == 0 or current == num_steps)
            ):
                with clock.paused() as times:
                    results = dict(eval_fn(trainer))
                    _write_scalars(eval_writer, results, current)
                    log.info("eval at step %d: %s", current, _fmt(results))
                    if chief:
                        record = history.make_record(current, times, last, results)
                        history.append_record(model_dir, record)
    bar.close()
    if not chief:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    _write_operative_config(model_dir, None, int(step.numpy()), chief)
    for w in (writer, eval_writer):
        if w is not None:
            w.flush()
    return last


def _build(trainer, strat, first_batch):
    """Builds model and optimizer variables inside the scope, from one replica's real batch.

    Variables are created in the cross-replica context, so they are mirrored.
    """
    local = strat.experimental_local_results(first_batch)[0]
    with strat.scope():
        trainer.build(local)


def _learning_rate(optimizer, step: int) -> float:
    """The learning rate that the update of (0-based) `step` used."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    schedule = getattr(optimizer, "_learning_rate", None)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return float(schedule(step))
    lr = optimizer.learning_rate
    # A constant rate is a (possibly mirrored) variable; identity reads one copy.
    return float(tf.identity(getattr(lr, "value", lr)))


def _write_scalars(writer, values: Mapping[str, float], step: int) -> None:
    if writer is None:
        return
    with writer.as_default(step=step):
        for k, v in values.items():
            tf.summary.scalar(k, float(v))


def _fmt(values: Mapping[str, float]) -> str:
    return " ".join(f"{k}={float(v):.4g}" for k, v in sorted(values.items()))


def _write_operative_config(model_dir, writer, step, chief) -> None:
    if not chief:
        return
    text = gin.operative_config_str()
    path = os.path.join(model_dir, OPERATIVE_CONFIG)
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)  # atomic: never a half-written config
    if writer is not None:
        # Markdown code block: TensorBoard's text plugin would otherwise reflow the lines.
        md = "\n".join("    " + line for line in text.splitlines())
        with writer.as_default(step=step):
            tf.summary.text("operative_config", md)


def _step_of(checkpoint_path: str) -> int:
    match = re.search(rf"{CHECKPOINT_PREFIX}-(\d+)$", checkpoint_path)
    if not match:
        raise ValueError(f"cannot read a step from checkpoint path {checkpoint_path}")
    return int(match.group(1))


def _remove_partial_checkpoints(model_dir: str) -> None:
    """Deletes what an interrupted save left: temp dirs and files of unlisted checkpoints."""
    state = tf.train.get_checkpoint_state(model_dir)
    listed = set()
    if state is not None:
        listed = {os.path.basename(p) for p in state.all_model_checkpoint_paths}
        listed.add(os.path.basename(state.model_checkpoint_path))
    pattern = re.compile(rf"^({CHECKPOINT_PREFIX}-\d+)(_temp.*|\.index|\.data-.*)$")
    for name in tf.io.gfile.listdir(model_dir):
        name = name.rstrip("/")
        match = pattern.match(name)
        if not match:
            continue
        if match.group(2).startswith("_temp") or match.group(1) not in listed:
            path = os.path.join(model_dir, name)
            log.warning("removing %s, left by an interrupted checkpoint save", path)
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)


def _worker_temp_dir(model_dir: str, strat) -> str:
    # Every MultiWorkerMirrored worker must take part in a save; only the chief's copy is kept.
    resolver = strat.cluster_resolver
    return os.path.join(model_dir, f".worker_{resolver.task_type}_{resolver.task_id}")
