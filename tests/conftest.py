"""Shared pytest set-up: quiet TF logs and fixed seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fixed_seeds():
    import keras
    import tensorflow as tf

    np.random.seed(0)
    tf.random.set_seed(0)
    keras.utils.set_random_seed(0)
    yield
