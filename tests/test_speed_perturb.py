import numpy as np
import pytest
import tensorflow as tf

from tfkd.data import pipeline, records, speed_perturb


def _change(wave, factor, num=None):
    num = len(wave) if num is None else num
    out, n = speed_perturb.change_speed(
        tf.constant(wave, tf.float32), tf.constant(num, tf.int32), tf.constant(factor)
    )
    return out.numpy(), int(n)


def test_factor_one_is_the_identity():
    wave = np.random.default_rng(0).uniform(-1, 1, 1001).astype(np.float32)
    out, n = _change(wave, 1.0)
    assert n == 1001
    np.testing.assert_array_equal(out, wave)


def test_factor_two_keeps_every_other_sample_and_half_interpolates():
    ramp = np.arange(11, dtype=np.float32)
    out, n = _change(ramp, 2.0)
    assert n == 6  # floor(10 / 2) + 1
    np.testing.assert_array_equal(out, [0, 2, 4, 6, 8, 10])
    out, n = _change(ramp, 0.5)
    assert n == 21
    np.testing.assert_allclose(out, np.arange(21) / 2, atol=1e-6)


def test_padding_beyond_num_samples_is_never_read():
    wave = np.array([1, 2, 3, 4, 99, 99], np.float32)  # 4 real samples, then padding
    out, n = _change(wave, 0.75, num=4)
    assert n == 5  # floor(3 / 0.75) + 1
    np.testing.assert_allclose(out, [1, 1.75, 2.5, 3.25, 4], atol=1e-6)


def test_a_tone_moves_up_by_the_factor():
    rate, hz = records.SAMPLE_RATE, 1000.0
    t = np.arange(rate) / rate
    out, n = _change(np.sin(2 * np.pi * hz * t).astype(np.float32), 1.1)
    assert n == 14545  # floor(15999 / 1.1) + 1
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * rate / n
    assert peak_hz == pytest.approx(1100.0, abs=2.0)


@pytest.mark.parametrize(
    "factors, message",
    [((), "speed_factors is empty"), ((0.9, 3.0), r"must lie in \[0.5, 2\], got \[3.0\]")],
)
def test_bad_factors_raise(factors, message):
    with pytest.raises(ValueError, match=message):
        speed_perturb.check_factors(factors)


def _records(tmp_path, n=12):
    rng = np.random.default_rng(1)
    path = str(tmp_path / "train-00000.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for i in range(n):
            w.write(
                records.serialize_utterance(
                    records.Utterance(
                        utterance_id=f"1-2-{i:04d}",
                        speaker_id="1",
                        text="a",
                        pcm16=rng.integers(-3000, 3000, size=1600 + 160 * i, dtype=np.int16),
                        token_ids=[3, 4],
                    )
                )
            )
    return path


def _lengths(ds):
    return {
        uid.decode(): int(num)
        for b in ds
        for uid, num in zip(b["utterance_id"].numpy(), b["num_samples"].numpy(), strict=True)
    }


def test_dataset_draws_a_factor_per_utterance_reproducibly(tmp_path):
    path = _records(tmp_path)
    kwargs = dict(global_batch_size=4, with_text=True, deterministic=True)
    plain = _lengths(pipeline.make_dataset(path, **kwargs))
    factors = (0.9, 1.0, 1.1)
    first = _lengths(pipeline.make_dataset(path, speed_factors=factors, seed=7, **kwargs))
    again = _lengths(pipeline.make_dataset(path, speed_factors=factors, seed=7, **kwargs))
    assert first == again
    used = set()
    for uid, num in first.items():
        matches = [f for f in factors if num == int(np.floor((plain[uid] - 1) / f)) + 1]
        assert matches, (uid, num, plain[uid])
        used.update(matches)
    assert len(used) >= 2  # 12 draws from 3 factors


def test_duration_filter_sees_the_perturbed_length(tmp_path):
    path = _records(tmp_path)  # 0.1 s to 0.19 s
    ds = pipeline.make_dataset(
        path, global_batch_size=12, speed_factors=(0.5,), max_duration_s=0.25, with_text=True
    )
    # Played at half speed, utterance i has 2 * (1600 + 160 i) - 1 samples: <= 4000 for i <= 2.
    assert _lengths(ds) == {"1-2-0000": 3199, "1-2-0001": 3519, "1-2-0002": 3839}


def test_pseudo_labels_cannot_be_perturbed(tmp_path):
    with pytest.raises(ValueError, match="perturb supervised data only"):
        pipeline.make_dataset(
            _records(tmp_path), global_batch_size=2, speed_factors=(0.9,), with_nbest=True
        )
