"""Session fixture: the `tiny` synthetic corpus, built once per test session.

conftest.py registers this module as a pytest plugin, so every test can ask for `tiny_corpus`.
"""

import pytest

from tfkd.data import synthetic_corpus

TINY_SEED = 0


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Path of a tiny corpus (36 utterances, 10 speakers, LibriSpeech layout), seed 0."""
    out = tmp_path_factory.mktemp("tiny_corpus")
    synthetic_corpus.build_tiny_corpus(str(out), seed=TINY_SEED)
    return out
