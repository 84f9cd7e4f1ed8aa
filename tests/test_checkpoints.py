"""Checkpoints: restoring a training run's model weights, refusing untracked weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from decoding_fakes import make_fake_model

from tfkd import checkpoints


class _ListHolder(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tracked = keras.layers.Dense(2, name="tracked")
        self.in_list = [keras.layers.Dense(2, name="in_list")]

    def call(self, x):
        return self.in_list[0](self.tracked(x))


def test_load_checkpoint_restores_and_refuses_untracked_weights(tmp_path):
    model = make_fake_model(vocab_size=5, num_features=3, seed=1)
    step = tf.Variable(5, dtype=tf.int64)
    tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, step=step), str(tmp_path), 1, checkpoint_name="ckpt"
    ).save(checkpoint_number=5)
    other = make_fake_model(vocab_size=5, num_features=3, seed=2)
    assert not np.allclose(other.joint_out.kernel.numpy(), model.joint_out.kernel.numpy())
    path, restored_step = checkpoints.load_checkpoint(other, str(tmp_path))
    assert (path, restored_step) == (str(tmp_path / "ckpt-5"), 5)
    for a, b in zip(model.weights, other.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    holder = _ListHolder(name="holder")
    holder(tf.zeros([1, 2]))
    root = tf.train.Checkpoint(model=holder)
    assert checkpoints.untracked_weights(root, holder) == [
        "holder/in_list/kernel",
        "holder/in_list/bias",
    ]
    with pytest.raises(RuntimeError, match="2 weights of holder are not tracked"):
        checkpoints.load_checkpoint(holder, str(tmp_path))


def test_load_checkpoint_names_the_checkpoint_when_it_does_not_fit(tmp_path):
    # Issue 21 item 11: one line naming the checkpoint and the operative config, not a raw
    # shape error or "Read less bytes than requested".
    model = make_fake_model(vocab_size=5, num_features=3, seed=1)
    tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, step=tf.Variable(5, dtype=tf.int64)),
        str(tmp_path),
        1,
        checkpoint_name="ckpt",
    ).save(checkpoint_number=5)
    path = str(tmp_path / "ckpt-5")
    other = make_fake_model(vocab_size=7, num_features=3, seed=2)
    with pytest.raises(ValueError) as info:
        checkpoints.load_checkpoint(other, str(tmp_path))
    message = str(info.value)
    assert message.startswith(f"checkpoint {path} does not restore into {other.name} (")
    assert message.endswith(
        f"build the model with the bindings of {tmp_path}/operative_config.gin (the config it "
        "was trained with), or restore the checkpoint's files if they are corrupt"
    )
    (data_file,) = tf.io.gfile.glob(path + ".data-*")
    with open(data_file, "r+b") as f:
        f.truncate(tf.io.gfile.stat(data_file).length // 2)
    same = make_fake_model(vocab_size=5, num_features=3, seed=2)
    with pytest.raises(ValueError, match=f"^checkpoint {path} does not restore into"):
        checkpoints.load_checkpoint(same, str(tmp_path))
