"""Restoring a model's weights from a training run's checkpoints.

`load_checkpoint` reads the model part of a `tfkd.training.loop.train` checkpoint into a built
model, refusing weights the checkpoint cannot hold (`untracked_weights`) and naming the run's
operative config when the checkpoint does not fit.
"""

import os

import tensorflow as tf


def load_checkpoint(model, model_dir, checkpoint=None):
    """Restores the model weights of a `tfkd.training.loop.train` checkpoint.

    The trainer saves `tf.train.Checkpoint(model=..., optimizer=..., step=...)`; only the
    model part is read here. The model must be built (e.g. `build_by_calling`) first.

    Args:
      model: the built model, made by the same builder as in training.
      model_dir: the training directory.
      checkpoint: a checkpoint path; default the latest in `model_dir`.

    Returns:
      (checkpoint path, training step).

    Raises:
      FileNotFoundError: no checkpoint in `model_dir`.
      RuntimeError: some model weights are invisible to `tf.train.Checkpoint`, so the
        checkpoint cannot hold them and the model would silently keep random values.
      ValueError: the checkpoint is unreadable or does not fit the model (one line naming it
        and the model directory's operative config).
    """
    path = checkpoint or tf.train.latest_checkpoint(model_dir)
    if not path:
        raise FileNotFoundError(f"no checkpoint in {model_dir}")
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    root = tf.train.Checkpoint(model=model, step=step)
    missing = untracked_weights(root, model)
    if missing:
        raise RuntimeError(
            f"{len(missing)} weights of {model.name} are not tracked by tf.train.Checkpoint "
            f"(e.g. {missing[:3]}), so no checkpoint holds them. Under Keras 3 on TF, layers kept "
            "in a plain Python list attribute are invisible to TF checkpoints."
        )
    try:
        status = root.restore(path)
        status.expect_partial()  # the optimizer slots are not needed
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, IndexError, ValueError, AssertionError) as e:
        # Corrupt files give "Read less bytes than requested"; other builder bindings, shapes.
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        config = os.path.join(model_dir or os.path.dirname(path), "operative_config.gin")
        raise ValueError(
            f"checkpoint {path} does not restore into {model.name} ({type(e).__name__}: "
            f"{first[:300]}); build the model with the bindings of {config} (the config it was "
            "trained with), or restore the checkpoint's files if they are corrupt"
        ) from e
    return path, int(step.numpy())


def save_weights(model, step, directory):
    """Writes `DIRECTORY/ckpt-<step>`, the model part of a training checkpoint: the same object
    graph under `model` and `step`, without the optimizer (a third of the size for Adam), which
    `load_checkpoint` reads like a training run's. Keeps one checkpoint there; returns its path."""
    step = tf.Variable(int(step), dtype=tf.int64, trainable=False)
    root = tf.train.Checkpoint(model=model, step=step)
    manager = tf.train.CheckpointManager(root, directory, max_to_keep=1)
    return manager.save(checkpoint_number=int(step.numpy()))


def untracked_weights(root, model):
    """Paths of `model.weights` that the checkpoint object graph under `root` does not reach."""
    reachable = {id(obj) for obj in tf.train.TrackableView(root).descendants()}
    return [
        w.path
        for w in model.weights
        if id(w) not in reachable and id(getattr(w, "value", None)) not in reachable
    ]
