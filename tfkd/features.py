"""Speech features as Keras layers: log-mel filterbanks and SpecAugment.

`LogMel` is the one front end of every tfkd model: training, SavedModels and
TFLite all feed it raw 16 kHz audio. It uses only `tf.signal` (frame, window,
RFFT, mel matrix). The TFLite converter maps these to builtin ops (`RFFT` becomes
`RFFT2D`, framing becomes `GATHER`/`RESHAPE`/`PAD`); on TF 2.17 no
`SELECT_TF_OPS` are needed (tests/test_features.py converts and compares it).

Frame-count rule (exact, also for padded batches): an utterance of `n` samples
has `T(n) = max(0, (n - frame_length) // frame_step + 1)` frames, each lying
wholly inside the valid samples. Frame `t` therefore sees the same samples
whatever padding follows, so a padded batch gives, on its first `T(n)` frames,
exactly the features of the unpadded utterance. Frames past `T(n)` are zeros.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

NORMALIZATIONS = ("none", "utterance", "global")


def num_frames(num_samples, frame_length: int = 400, frame_step: int = 160):
    """Valid frames for `num_samples` samples: `max(0, (n - frame_length) // frame_step + 1)`.

    Works on Python ints, NumPy arrays and tensors alike.
    """
    if isinstance(num_samples, int | np.integer):
        return max(0, (int(num_samples) - frame_length) // frame_step + 1)
    if isinstance(num_samples, np.ndarray):
        return np.maximum(0, (num_samples - frame_length) // frame_step + 1)
    n = tf.convert_to_tensor(num_samples)
    return tf.maximum(tf.zeros_like(n), (n - frame_length) // frame_step + 1)


def _frame_mask(lengths: tf.Tensor, max_len: tf.Tensor) -> tf.Tensor:
    """float32 [B, T, 1]: 1 on valid frames."""
    return tf.sequence_mask(lengths, max_len, dtype=tf.float32)[:, :, None]


@keras.saving.register_keras_serializable(package="tfkd")
class LogMel(keras.layers.Layer):
    """Waveform → log-mel filterbank features (+ frame lengths).

    Call args:
        waveform: float32 [B, N], samples in [-1, 1), zero padded.
        lengths: int [B] valid samples per row; `None` means all `N` valid.

    Returns:
        features float32 [B, T, num_mel_bins] with `T = max(1, T(N))` (one all-zero
        frame when the batch is shorter than a window), and frame lengths int32 [B]
        `T(lengths)` (see the module docstring).

    Normalisation (`normalization`): `"none"`; `"utterance"`, mean/variance per
    utterance and mel bin over its valid frames only; `"global"`, with `mean` and
    `stddev` vectors from `tools/compute_feature_stats.py` (see `from_stats_file`).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        num_mel_bins: int = 80,
        frame_length_ms: float = 25.0,
        frame_step_ms: float = 10.0,
        lower_edge_hertz: float = 20.0,
        upper_edge_hertz: float = 7600.0,
        log_floor: float = 1e-6,
        normalization: str = "none",
        mean: Sequence[float] | None = None,
        stddev: Sequence[float] | None = None,
        **kwargs,
    ):
        # The FFT and the log must not run in float16 under a mixed policy.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
            )
        if (normalization == "global") != (mean is not None and stddev is not None):
            raise ValueError("mean and stddev are given exactly when normalization='global'")
        self.sample_rate = int(sample_rate)
        self.num_mel_bins = int(num_mel_bins)
        self.frame_length_ms = float(frame_length_ms)
        self.frame_step_ms = float(frame_step_ms)
        self.lower_edge_hertz = float(lower_edge_hertz)
        self.upper_edge_hertz = float(upper_edge_hertz)
        self.log_floor = float(log_floor)
        self.normalization = normalization
        self.frame_length = int(round(sample_rate * frame_length_ms / 1000.0))
        self.frame_step = int(round(sample_rate * frame_step_ms / 1000.0))
        self.fft_length = 2 ** math.ceil(math.log2(self.frame_length))
        self.mean = None if mean is None else [float(v) for v in mean]
        self.stddev = None if stddev is None else [float(v) for v in stddev]
        for name, vec in (("mean", self.mean), ("stddev", self.stddev)):
            if vec is not None and len(vec) != self.num_mel_bins:
                raise ValueError(f"{name} has {len(vec)} values, expected {self.num_mel_bins}")
        if self.stddev is not None and min(self.stddev) <= 0.0:
            raise ValueError("stddev must be positive")
        # A constant, so SavedModel and TFLite graphs carry it without variables.
        self._mel_matrix = tf.signal.linear_to_mel_weight_matrix(
            num_mel_bins=self.num_mel_bins,
            num_spectrogram_bins=self.fft_length // 2 + 1,
            sample_rate=self.sample_rate,
            lower_edge_hertz=self.lower_edge_hertz,
            upper_edge_hertz=self.upper_edge_hertz,
        )

    @classmethod
    def from_stats_file(cls, path: str, **kwargs) -> LogMel:
        """A `LogMel` with global normalisation from a `compute_feature_stats` JSON file.

        The file's feature settings are used unless overridden in `kwargs`.
        """
        stats = load_feature_stats(path)
        config = dict(stats["feature_config"])
        config.update(kwargs)
        config.update(normalization="global", mean=stats["mean"], stddev=stats["stddev"])
        return cls(**config)

    @property
    def mel_matrix(self) -> tf.Tensor:
        """float32 [fft_length // 2 + 1, num_mel_bins]: power spectrum -> mel weights (constant)."""
        return self._mel_matrix

    def to_mel(self, power: tf.Tensor) -> tf.Tensor:
        """Power spectrum [B, T, fft_length // 2 + 1] -> mel energies [B, T, num_mel_bins].

        The one place `call` applies `mel_matrix`; export variants override it (see
        `tfkd.export.streaming.RuntimeMelLogMel`).
        """
        return tf.tensordot(power, self.mel_matrix, axes=1)

    def num_frames(self, num_samples):
        """Frame count for `num_samples` (int, NumPy or tensor); see the module docstring."""
        return num_frames(num_samples, self.frame_length, self.frame_step)

    def call(self, waveform, lengths=None):
        waveform = tf.convert_to_tensor(waveform, tf.float32)
        batch, max_samples = tf.shape(waveform)[0], tf.shape(waveform)[1]
        if lengths is None:
            lengths = tf.fill([batch], max_samples)
        lengths = tf.cast(lengths, tf.int32)
        # stft cannot make zero frames; pad short batches up to one window.
        short = tf.maximum(0, self.frame_length - max_samples)
        waveform = tf.pad(waveform, [[0, 0], [0, short]])
        stft = tf.signal.stft(
            waveform,
            frame_length=self.frame_length,
            frame_step=self.frame_step,
            fft_length=self.fft_length,
            window_fn=tf.signal.hann_window,
            pad_end=False,
        )
        # real² + imag² rather than abs(): no sqrt, and REAL/IMAG are TFLite builtins.
        power = tf.math.square(tf.math.real(stft)) + tf.math.square(tf.math.imag(stft))
        mel = self.to_mel(power)
        feats = tf.math.log(tf.maximum(mel, self.log_floor))
        frame_lengths = self.num_frames(lengths)
        mask = _frame_mask(frame_lengths, tf.shape(feats)[1])
        if self.normalization == "utterance":
            count = tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)
            mean = tf.reduce_sum(feats * mask, axis=1, keepdims=True) / count
            var = tf.reduce_sum(tf.square(feats - mean) * mask, axis=1, keepdims=True) / count
            feats = (feats - mean) * tf.math.rsqrt(var + 1e-5)
        elif self.normalization == "global":
            feats = (feats - tf.constant(self.mean)) / tf.constant(self.stddev)
        return feats * mask, frame_lengths

    def compute_output_shape(self, waveform_shape, lengths_shape=None):
        n = waveform_shape[1]
        t = None if n is None else max(1, num_frames(n, self.frame_length, self.frame_step))
        return (waveform_shape[0], t, self.num_mel_bins), (waveform_shape[0],)

    def get_config(self):
        config = super().get_config()
        config.update(
            sample_rate=self.sample_rate,
            num_mel_bins=self.num_mel_bins,
            frame_length_ms=self.frame_length_ms,
            frame_step_ms=self.frame_step_ms,
            lower_edge_hertz=self.lower_edge_hertz,
            upper_edge_hertz=self.upper_edge_hertz,
            log_floor=self.log_floor,
            normalization=self.normalization,
            mean=self.mean,
            stddev=self.stddev,
        )
        return config

    def feature_config(self) -> dict:
        """The settings that define the un-normalised features (stored with global stats)."""
        keys = (
            "sample_rate",
            "num_mel_bins",
            "frame_length_ms",
            "frame_step_ms",
            "lower_edge_hertz",
            "upper_edge_hertz",
            "log_floor",
        )
        return {k: getattr(self, k) for k in keys}


def save_feature_stats(
    path: str, mean: np.ndarray, stddev: np.ndarray, num_frames: int, feature_config: dict
) -> None:
    """Writes global log-mel statistics as JSON (read by `load_feature_stats`)."""
    payload = {
        "num_frames": int(num_frames),
        "feature_config": feature_config,
        "mean": [float(v) for v in mean],
        "stddev": [float(v) for v in stddev],
    }
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(payload, f, indent=1)


def load_feature_stats(path: str) -> dict:
    """Reads a `save_feature_stats` JSON file: `mean`, `stddev`, `num_frames`, `feature_config`."""
    with tf.io.gfile.GFile(path) as f:
        stats = json.load(f)
    missing = {"mean", "stddev", "num_frames", "feature_config"} - set(stats)
    if missing:
        raise ValueError(f"{path}: not a feature-stats file, missing {sorted(missing)}")
    return stats


@keras.saving.register_keras_serializable(package="tfkd")
class SpecAugment(keras.layers.Layer):
    """Frequency and time masking with length-adaptive time masks.

    Follows Park et al. 2019, "SpecAugment on large-scale datasets": an utterance
    of `L` valid frames gets `min(max_time_masks, floor(time_mask_multiplicity * L))`
    time masks, each of width uniform in `[0, floor(time_mask_ratio * L)]`, placed
    inside the valid frames. Each utterance also gets `num_freq_masks` masks of
    width uniform in `[0, max_freq_mask_width]`. Masked cells take `mask_value`
    (0 suits normalised features). Padding frames are left as they are.

    Active only when called with `training=True`. Random numbers come from a
    `keras.random.SeedGenerator` (or the `seed` call argument), so the layer
    compiles under `tf.function(jit_compile=True)`.

    Call args:
        features: float [B, T, F].
        lengths: int [B] valid frames; `None` means all `T`.
        training: masks only when true.
        seed: optional int [2] stateless seed; replaces the layer's generator for
            this call. Without it, each call draws a new seed from the generator and,
            under a multi-replica strategy, folds in the replica id.

    Returns:
        float [B, T, F], the masked features.
    """

    def __init__(
        self,
        num_freq_masks: int = 2,
        max_freq_mask_width: int = 27,
        max_time_masks: int = 10,
        time_mask_multiplicity: float = 0.05,
        time_mask_ratio: float = 0.05,
        mask_value: float = 0.0,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if min(num_freq_masks, max_freq_mask_width, max_time_masks) < 0:
            raise ValueError("mask counts and widths must be non-negative")
        if not (0.0 <= time_mask_multiplicity and 0.0 <= time_mask_ratio <= 1.0):
            raise ValueError("time_mask_multiplicity >= 0 and 0 <= time_mask_ratio <= 1")
        self.num_freq_masks = int(num_freq_masks)
        self.max_freq_mask_width = int(max_freq_mask_width)
        self.max_time_masks = int(max_time_masks)
        self.time_mask_multiplicity = float(time_mask_multiplicity)
        self.time_mask_ratio = float(time_mask_ratio)
        self.mask_value = float(mask_value)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _call_seed(self, seed):
        """int64 [2]: the given seed, else the generator's next one folded with the replica id."""
        if seed is not None:
            return tf.cast(seed, tf.int64)
        seed = tf.cast(self.seed_generator.next(), tf.int64)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            # The generator state is mirrored, so without this every replica would
            # draw the same masks.
            replica = tf.cast(context.replica_id_in_sync_group, tf.int64)
            seed = tf.random.experimental.stateless_fold_in(seed, replica)
        return seed

    def masks(self, shape, lengths, seed=None):
        """Boolean masks (True = masked) for features of `shape` [B, T, F].

        Args:
            shape: int [3] the features' shape.
            lengths: int [B] valid frames.
            seed: as in `call`; without it, this draws from the layer's generator.

        Returns:
            time_mask bool [B, T] and freq_mask bool [B, F].
        """
        batch, max_t, num_f = shape[0], shape[1], shape[2]
        lengths = tf.cast(lengths, tf.float32)
        seed_t, seed_f = tf.unstack(
            tf.random.experimental.stateless_split(self._call_seed(seed), 2)
        )

        # Time masks: up to max_time_masks per row; row b uses the first n_b of them.
        k = self.max_time_masks
        u = tf.random.stateless_uniform(tf.stack([batch, k, 2]), seed_t)
        n_masks = tf.minimum(tf.floor(self.time_mask_multiplicity * lengths), float(k))
        max_width = tf.floor(self.time_mask_ratio * lengths)[:, None]
        width = tf.floor(u[..., 0] * (max_width + 1.0))
        start = tf.floor(u[..., 1] * (lengths[:, None] - width + 1.0))
        active = tf.range(k, dtype=tf.float32)[None, :] < n_masks[:, None]
        t = tf.cast(tf.range(max_t), tf.float32)[None, None, :]
        in_mask = (t >= start[..., None]) & (t < (start + width)[..., None]) & active[..., None]
        time_mask = tf.reduce_any(in_mask, axis=1)

        # Frequency masks: the same number for every row.
        k = self.num_freq_masks
        u = tf.random.stateless_uniform(tf.stack([batch, k, 2]), seed_f)
        num_f_float = tf.cast(num_f, tf.float32)
        width = tf.floor(u[..., 0] * (tf.minimum(float(self.max_freq_mask_width), num_f_float) + 1))
        start = tf.floor(u[..., 1] * (num_f_float - width + 1.0))
        f = tf.cast(tf.range(num_f), tf.float32)[None, None, :]
        in_mask = (f >= start[..., None]) & (f < (start + width)[..., None])
        freq_mask = tf.reduce_any(in_mask, axis=1)
        return time_mask, freq_mask

    def call(self, features, lengths=None, training=None, seed=None):
        if not training:
            return features
        shape = tf.shape(features)
        if lengths is None:
            lengths = tf.fill([shape[0]], shape[1])
        time_mask, freq_mask = self.masks(shape, lengths, seed)
        valid = tf.sequence_mask(lengths, shape[1])
        masked = (time_mask[:, :, None] | freq_mask[:, None, :]) & valid[:, :, None]
        return tf.where(masked, tf.cast(self.mask_value, features.dtype), features)

    def compute_output_shape(self, features_shape, lengths_shape=None):
        return features_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_freq_masks=self.num_freq_masks,
            max_freq_mask_width=self.max_freq_mask_width,
            max_time_masks=self.max_time_masks,
            time_mask_multiplicity=self.time_mask_multiplicity,
            time_mask_ratio=self.time_mask_ratio,
            mask_value=self.mask_value,
            seed=self.seed,
        )
        return config
