"""Shared pytest set-up: quiet TF logs, fixed seeds, session fixtures."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

# Session fixtures shared by every test module (e.g. `tiny_corpus`).
pytest_plugins = ["fixtures_corpus"]


@pytest.fixture(autouse=True)
def _fixed_seeds():
    import keras

    # Seeds Python's `random`, NumPy's global generator and TensorFlow together.
    keras.utils.set_random_seed(0)
    yield


@pytest.fixture
def clean_gin():
    """gin's global configuration is empty before and after the test."""
    import gin

    gin.clear_config()
    yield
    gin.clear_config()
