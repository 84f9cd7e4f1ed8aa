"""WER counts on hand-computed cases."""

import math

import jiwer
import numpy as np
import pytest

from tfkd.metrics import WerAccumulator, WordErrors, corpus_errors, utterance_errors


def test_substitution_and_insertion():
    (e,) = utterance_errors(["a b c d"], ["a x c d e"])
    assert (e.substitutions, e.deletions, e.insertions) == (1, 0, 1)
    assert (e.reference_words, e.hypothesis_words, e.utterances) == (4, 5, 1)
    assert e.wer == pytest.approx(50.0)


def test_deletions_and_extra_spaces():
    (e,) = utterance_errors(["one two three four"], ["  one   four "])
    assert (e.substitutions, e.deletions, e.insertions, e.reference_words) == (0, 2, 0, 4)
    assert e.wer == pytest.approx(50.0)


def test_case_is_not_folded():
    (e,) = utterance_errors(["The cat"], ["the cat"])
    assert e.substitutions == 1


def test_empty_reference_and_hypothesis():
    empty_ref, empty_hyp, both = utterance_errors(["", "a b", ""], ["hi there", "", ""])
    assert (empty_ref.insertions, empty_ref.reference_words) == (2, 0)
    assert math.isinf(empty_ref.wer)
    assert (empty_hyp.deletions, empty_hyp.wer) == (2, 100.0)
    assert both.wer == 0.0 and both.errors == 0


def test_corpus_wer_weights_by_reference_words():
    # 1 error in 10 reference words is 10 %, not the 50 % mean of per-utterance WERs.
    total = corpus_errors(["a", "a b c d e f g h i"], ["b", "a b c d e f g h i"])
    assert (total.errors, total.reference_words, total.utterances) == (1, 10, 2)
    assert total.wer == pytest.approx(10.0)
    assert total.as_dict() == {
        "substitutions": 1,
        "deletions": 0,
        "insertions": 0,
        "reference_words": 10,
        "hypothesis_words": 10,
        "utterances": 2,
        "errors": 1,
        "wer": pytest.approx(10.0),
    }


def test_accumulator_streams_batches():
    acc = WerAccumulator()
    first = acc.update(["a b c d"], ["a x c d e"])
    acc.update(["one two three four", "x"], ["one four", "x"])
    assert len(first) == 1
    total = acc.result()
    assert total == WordErrors(1, 2, 1, 9, 8, 3)
    assert total.wer == pytest.approx(400 / 9)
    acc.reset()
    assert acc.result() == WordErrors()
    assert acc.result().wer == 0.0


def test_matches_jiwer_corpus_wer_on_random_texts():
    rng = np.random.default_rng(0)
    words = ["a", "b", "c", "d"]
    refs = [" ".join(rng.choice(words, size=rng.integers(1, 8))) for _ in range(30)]
    hyps = [" ".join(rng.choice(words, size=rng.integers(0, 8))) for _ in range(30)]
    acc = WerAccumulator()
    for i in range(0, 30, 7):
        acc.update(refs[i : i + 7], hyps[i : i + 7])
    assert acc.result().wer == pytest.approx(100 * jiwer.wer(refs, hyps))
    out = jiwer.process_words(refs, hyps)
    r = acc.result()
    assert (r.substitutions, r.deletions, r.insertions) == (
        out.substitutions,
        out.deletions,
        out.insertions,
    )


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        utterance_errors(["a", "b"], ["a"])
