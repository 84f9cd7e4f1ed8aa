import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkd import features


def _mel_matrix_np(num_mel, num_bins, sr, lo, hi):
    """Triangular filters on the HTK mel scale, evaluated at the FFT bin centres."""
    mel = lambda hz: 1127.0 * np.log1p(hz / 700.0)
    bin_mel = mel(np.linspace(0.0, sr / 2.0, num_bins))
    edges = np.linspace(mel(lo), mel(hi), num_mel + 2)
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    up = (bin_mel[:, None] - left) / (centre - left)
    down = (right - bin_mel[:, None]) / (right - centre)
    w = np.maximum(0.0, np.minimum(up, down))
    w[0] = 0.0  # the DC bin carries no mel energy
    return w


def _log_mel_np(x, floor=1e-6):
    """Float64 reference: 400-sample periodic Hann frames, hop 160, 512-point FFT."""
    n_frames = (len(x) - 400) // 160 + 1
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = np.stack([x[i * 160 : i * 160 + 400] for i in range(n_frames)]) * window
    power = np.abs(np.fft.rfft(frames, n=512)) ** 2
    mel = power @ _mel_matrix_np(80, 257, 16000, 20.0, 7600.0)
    return np.log(np.maximum(mel, floor))


def _waves(lengths, seed=0):
    """Noisy chirps, so every mel band holds energy well above the floor."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        t = np.arange(n) / 16000.0
        chirp = 0.3 * np.sin(2 * np.pi * (100 + 3000 * t) * t)
        out.append((chirp + 0.05 * rng.standard_normal(n)).astype(np.float32))
    return out


def _pad(waves):
    batch = np.zeros([len(waves), max(len(w) for w in waves)], np.float32)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    return batch, np.array([len(w) for w in waves], np.int32)


def test_frame_count_formula():
    assert features.num_frames(399) == 0
    assert features.num_frames(400) == 1
    assert features.num_frames(559) == 1
    assert features.num_frames(560) == 2
    assert features.num_frames(16000) == 98
    np.testing.assert_array_equal(features.num_frames(np.array([0, 400, 16000])), [0, 1, 98])
    assert features.num_frames(tf.constant([399, 560])).numpy().tolist() == [0, 2]


def test_log_mel_matches_numpy_reference():
    layer = features.LogMel()
    assert (layer.frame_length, layer.frame_step, layer.fft_length) == (400, 160, 512)
    (wave,) = _waves([8000])
    feats, lengths = layer(wave[None])
    assert feats.shape == (1, 48, 80)
    assert lengths.numpy().tolist() == [48]
    ref = _log_mel_np(wave.astype(np.float64))
    np.testing.assert_allclose(feats.numpy()[0], ref, atol=5e-4, rtol=1e-4)


def test_mel_matrix_is_public_and_read_only():
    layer = features.LogMel()
    assert layer.mel_matrix.shape == (257, 80) and layer.mel_matrix.dtype == tf.float32
    ref = _mel_matrix_np(80, 257, 16000, 20.0, 7600.0)
    np.testing.assert_allclose(layer.mel_matrix.numpy(), ref, atol=2e-3)
    with pytest.raises(AttributeError):
        layer.mel_matrix = tf.zeros([257, 80])


def test_padding_invariance_and_zeroed_padding():
    layer = features.LogMel()
    waves = _waves([4000, 7000, 399])
    batch, lengths = _pad(waves)
    feats, frame_lengths = layer(batch, lengths)
    assert frame_lengths.numpy().tolist() == [23, 42, 0]
    assert feats.shape == (3, 42, 80)
    for i, w in enumerate(waves[:2]):
        alone, _ = layer(w[None])
        t = int(frame_lengths[i])
        np.testing.assert_allclose(feats[i, :t], alone[0], atol=1e-4)
        assert not np.any(feats.numpy()[i, t:])
    assert not np.any(feats.numpy()[2])


def test_batch_shorter_than_a_window_gives_one_zero_frame():
    feats, lengths = features.LogMel()(np.ones([2, 100], np.float32), np.array([100, 50]))
    assert feats.shape == (2, 1, 80)
    assert lengths.numpy().tolist() == [0, 0]
    assert not np.any(feats.numpy())


def test_utterance_normalisation_uses_valid_frames_only():
    waves = _waves([6000, 9000], seed=1)
    batch, lengths = _pad(waves)
    feats, frame_lengths = features.LogMel(normalization="utterance")(batch, lengths)
    raw0 = _log_mel_np(waves[0].astype(np.float64))
    expected = (raw0 - raw0.mean(0)) / np.sqrt(raw0.var(0) + 1e-5)
    t0 = int(frame_lengths[0])
    np.testing.assert_allclose(feats[0, :t0], expected, atol=5e-3)
    np.testing.assert_allclose(feats.numpy()[0, :t0].mean(0), 0.0, atol=1e-4)
    assert not np.any(feats.numpy()[0, t0:])


def test_global_normalisation_and_stats_file(tmp_path):
    mean = np.linspace(-5, 5, 80)
    std = np.linspace(1, 3, 80)
    (wave,) = _waves([5000])
    plain, _ = features.LogMel()(wave[None])
    path = str(tmp_path / "stats.json")
    features.save_feature_stats(path, mean, std, 1234, features.LogMel().feature_config())
    assert json.load(open(path))["num_frames"] == 1234
    layer = features.LogMel.from_stats_file(path)
    assert layer.normalization == "global"
    normed, _ = layer(wave[None])
    np.testing.assert_allclose(normed[0], (plain[0] - mean) / std, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="exactly when"):
        features.LogMel(normalization="global")
    with pytest.raises(ValueError, match="expected 80"):
        features.LogMel(normalization="global", mean=[0.0], stddev=[1.0])


def test_log_mel_compiles_with_xla():
    layer = features.LogMel(normalization="utterance")
    batch, lengths = _pad(_waves([3000, 5000], seed=2))
    compiled = tf.function(lambda x, n: layer(x, n), jit_compile=True)
    feats, frame_lengths = compiled(batch, lengths)
    eager, _ = layer(batch, lengths)
    assert frame_lengths.numpy().tolist() == [17, 29]
    np.testing.assert_allclose(feats, eager, atol=1e-4)


def test_log_mel_config_round_trip():
    layer = features.LogMel(normalization="global", mean=[0.5] * 80, stddev=[2.0] * 80)
    clone = features.LogMel.from_config(layer.get_config())
    x = _waves([3000])[0][None]
    np.testing.assert_array_equal(layer(x)[0], clone(x)[0])
    assert clone.dtype_policy.compute_dtype == "float32"


def _ramp(batch=4, t=200, f=80):
    return tf.reshape(tf.range(batch * t * f, dtype=tf.float32) + 1.0, [batch, t, f])


def test_spec_augment_is_identity_unless_training():
    x = _ramp()
    layer = features.SpecAugment(seed=1)
    np.testing.assert_array_equal(layer(x), x)
    np.testing.assert_array_equal(layer(x, training=False), x)


def test_spec_augment_masks_respect_bounds_and_lengths():
    layer = features.SpecAugment(
        num_freq_masks=2,
        max_freq_mask_width=10,
        max_time_masks=4,
        time_mask_multiplicity=0.02,
        time_mask_ratio=0.1,
        mask_value=-7.0,
        seed=3,
    )
    lengths = tf.constant([200, 120, 40, 0])
    seed = tf.constant([1, 2])
    time_mask, freq_mask = layer.masks(tf.constant([4, 200, 80]), lengths, seed)
    time_mask, freq_mask = time_mask.numpy(), freq_mask.numpy()
    # Row 0: min(4, floor(0.02*200)) = 4 masks of width <= 20 → at most 80 frames.
    assert 0 < time_mask[0].sum() <= 80
    # Row 1: 2 masks of width <= 12, within the first 120 frames.
    assert time_mask[1].sum() <= 24 and not time_mask[1, 120:].any()
    # Row 2: floor(0.02*40) = 0 masks; row 3 has no frames.
    assert not time_mask[2].any() and not time_mask[3].any()
    assert (freq_mask.sum(1) <= 20).all() and freq_mask.any()
    # Overlapping masks merge, so each row has at most as many masked runs as masks.
    runs = lambda m: np.count_nonzero(np.diff(np.concatenate([[0], m.astype(int)])) == 1)
    assert [runs(m) <= n for m, n in zip(time_mask, [4, 2, 0, 0], strict=True)] == [True] * 4
    assert all(runs(m) <= 2 for m in freq_mask)

    x = _ramp()
    y = layer(x, lengths, training=True, seed=seed).numpy()
    valid = np.arange(200)[None, :] < lengths.numpy()[:, None]
    masked = y == -7.0
    assert not masked[~valid].any()  # padding untouched
    np.testing.assert_array_equal(y[~masked], x.numpy()[~masked])
    # Each masked cell lies in a masked frame or a masked frequency bin of its row.
    t_or_f = (time_mask[:, :, None] | freq_mask[:, None, :]) & valid[:, :, None]
    assert masked.sum() > 0
    np.testing.assert_array_equal(masked, t_or_f)


def test_spec_augment_stateless_seed_is_reproducible():
    layer = features.SpecAugment(seed=0)
    x = _ramp()
    seed = tf.constant([5, 6])
    a = layer(x, training=True, seed=seed)
    b = layer(x, training=True, seed=seed)
    c = layer(x, training=True, seed=tf.constant([5, 7]))
    np.testing.assert_array_equal(a, b)
    assert np.any(a.numpy() != c.numpy())
    # The generator advances: two calls without a seed differ.
    assert np.any(layer(x, training=True).numpy() != layer(x, training=True).numpy())


def test_spec_augment_compiles_with_xla():
    layer = features.SpecAugment(seed=2, max_time_masks=3, time_mask_multiplicity=0.05)
    lengths = tf.constant([200, 100, 60, 30])

    @tf.function(jit_compile=True)
    def augment(x, n):
        return layer(x, n, training=True)

    y = augment(_ramp(), lengths).numpy()
    assert (y == 0.0).any()
    assert not (y[1, 100:] == 0.0).any()


def test_spec_augment_config_round_trip():
    layer = features.SpecAugment(num_freq_masks=1, max_time_masks=3, seed=9)
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, features.SpecAugment)
    assert clone.get_config() == layer.get_config()


_TFLITE_SCRIPT = """
import json
import numpy as np, tensorflow as tf
from tfkd import features

layer = features.LogMel(normalization="utterance")

@tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
def log_mel(waveform):
    return layer(waveform[None])[0]

converter = tf.lite.TFLiteConverter.from_concrete_functions(
    [log_mel.get_concrete_function()], log_mel
)
converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
interpreter = tf.lite.Interpreter(model_content=converter.convert())
x = (0.1 * np.random.default_rng(0).standard_normal(12345)).astype(np.float32)
interpreter.resize_tensor_input(0, [x.size])
interpreter.allocate_tensors()
interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
interpreter.invoke()
y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
print("RESULT " + json.dumps([list(y.shape), float(np.abs(y - log_mel(x).numpy()).max())]))
"""


def test_log_mel_converts_to_tflite_builtins_and_matches():
    # In a subprocess: the converter can abort the process on failure.
    proc = subprocess.run(
        [sys.executable, "-c", _TFLITE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        cwd=pathlib.Path(__file__).resolve().parents[1],
    )
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and result, proc.stderr[-3000:]
    shape, max_diff = json.loads(result[0][len("RESULT ") :])
    assert shape == [1, 75, 80]
    assert max_diff < 1e-3
