import numpy as np
import pytest
import tensorflow as tf

from tfkd.data import records


def _utt(**kw):
    rng = np.random.default_rng(0)
    base = dict(
        utterance_id="1-2-0003",
        speaker_id="1",
        text="hello world",
        pcm16=rng.integers(-32768, 32767, size=1234, dtype=np.int16),
        token_ids=[5, 9, 2],
    )
    base.update(kw)
    return records.Utterance(**base)


def test_round_trip_is_sample_exact():
    utt = _utt()
    parsed = records.parse_example(tf.constant(records.serialize_utterance(utt)))
    np.testing.assert_array_equal(
        np.round(parsed["waveform"].numpy() * 32768.0).astype(np.int16), utt.pcm16
    )
    assert int(parsed["num_samples"]) == 1234
    assert int(parsed["sample_rate"]) == 16000
    assert parsed["text"].numpy() == b"hello world"
    assert parsed["token_ids"].numpy().tolist() == [5, 9, 2]
    assert parsed["utterance_id"].numpy() == b"1-2-0003"
    np.testing.assert_allclose(float(parsed["duration"]), 1234 / 16000, rtol=1e-6)


def test_nbest_fields_round_trip():
    utt = _utt(nbest_token_ids=[[3, 4], [3], []], nbest_teacher_scores=[-1.0, -2.5, -9.0])
    parsed = records.parse_example(tf.constant(records.serialize_utterance(utt)), with_nbest=True)
    assert parsed["nbest_token_ids"].numpy().tolist() == [[3, 4], [3, 0], [0, 0]]
    assert parsed["nbest_lengths"].numpy().tolist() == [2, 1, 0]
    np.testing.assert_allclose(parsed["teacher_scores"].numpy(), [-1.0, -2.5, -9.0])


def test_rejects_bad_audio_and_mismatched_nbest():
    with pytest.raises(ValueError, match="1-D int16"):
        records.serialize_utterance(_utt(pcm16=np.zeros(10, np.float32)))
    with pytest.raises(ValueError, match="2 N-best hypotheses but 1 scores"):
        records.serialize_utterance(_utt(nbest_token_ids=[[1], [2]], nbest_teacher_scores=[0.0]))
