"""Channel augmentation for synthetic speech: level, coloured noise, slight tempo and pitch.

A speaker's `Channel` is drawn once from the corpus seed; each utterance then draws its own
gain and SNR around the speaker's values from an utterance-specific generator, so the result does
not depend on which process renders it.
"""

import dataclasses

import numpy as np

NOISE_COLORS = ("white", "pink", "brown")
SNR_RANGE_DB = (5.0, 25.0)
# Speech is first brought to this RMS level (dBFS) so that gains mean the same for every engine.
REFERENCE_DBFS = -23.0


@dataclasses.dataclass(frozen=True)
class Channel:
    """Augmentation settings of one speaker.

    Attributes:
      gain_db: level relative to REFERENCE_DBFS; each utterance adds up to +-2 dB.
      noise: None, "white", "pink" or "brown".
      snr_db: mean SNR of the added noise; each utterance draws within +-3 dB, inside 5-25 dB.
      tempo: sox tempo factor (1.0 = unchanged), keeps pitch.
      pitch_cents: sox pitch shift, keeps duration.
    """

    gain_db: float = 0.0
    noise: str | None = None
    snr_db: float | None = None
    tempo: float = 1.0
    pitch_cents: float = 0.0


def sample_channel(rng: np.random.Generator, noise_prob: float = 0.5) -> Channel:
    """Draws a speaker's channel: noise on about `noise_prob` of speakers, slight tempo/pitch
    changes on about 30% each."""
    gain_db = round(float(rng.uniform(-6.0, 6.0)), 2)
    noise = snr = None
    if rng.random() < noise_prob:
        noise = NOISE_COLORS[int(rng.integers(len(NOISE_COLORS)))]
        snr = round(float(rng.uniform(*SNR_RANGE_DB)), 2)
    tempo = round(float(rng.uniform(0.94, 1.06)), 3) if rng.random() < 0.3 else 1.0
    cents = round(float(rng.uniform(-80.0, 80.0)), 1) if rng.random() < 0.3 else 0.0
    return Channel(gain_db, noise, snr, tempo, cents)


def sox_effects(channel: Channel) -> tuple[str, ...]:
    """sox effect arguments for the channel's tempo and pitch change (empty if none)."""
    fx = ()
    if channel.pitch_cents:
        fx += ("pitch", f"{channel.pitch_cents:.1f}")
    if channel.tempo != 1.0:
        fx += ("tempo", "-s", f"{channel.tempo:.3f}")
    return fx


def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise with a 1/f^0 (white), 1/f (pink) or 1/f^2 (brown) power spectrum."""
    if color not in NOISE_COLORS:
        raise ValueError(f"Unknown noise colour {color!r}; use one of {NOISE_COLORS}")
    white = rng.standard_normal(n)
    if color != "white":
        spectrum = np.fft.rfft(white)
        freqs = np.arange(len(spectrum), dtype=np.float64)
        freqs[0] = 1.0  # leave DC alone instead of dividing by zero
        exponent = 0.5 if color == "pink" else 1.0  # amplitude slope = half the power slope
        white = np.fft.irfft(spectrum / freqs**exponent, n)
        white -= white.mean()
    return white / np.sqrt(np.mean(white**2))


def add_noise(
    speech: np.ndarray, snr_db: float, color: str, rng: np.random.Generator
) -> np.ndarray:
    """Adds noise so that mean(speech^2) / mean(noise^2) equals `snr_db` over the whole clip."""
    power = np.mean(np.square(speech, dtype=np.float64))
    noise = colored_noise(len(speech), color, rng) * np.sqrt(power / 10 ** (snr_db / 10))
    return speech + noise


def draw_utterance(channel: Channel, rng: np.random.Generator) -> dict:
    """Draws one utterance's gain (dB) and, if the speaker is noisy, its SNR (dB).

    These are the first draws from the utterance's generator, so they can be recomputed without
    rendering the audio.
    """
    drawn = {"gain_db": round(channel.gain_db + float(rng.uniform(-2.0, 2.0)), 2)}
    if channel.noise is not None:
        lo, hi = SNR_RANGE_DB
        low, high = max(lo, channel.snr_db - 3.0), min(hi, channel.snr_db + 3.0)
        drawn["snr_db"] = round(float(rng.uniform(low, high)), 2)
    return drawn


def apply_channel(
    wave: np.ndarray, channel: Channel, rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """Sets the level and adds noise to one int16 utterance (tempo/pitch are done by sox).

    Args:
      wave: int16 samples.
      channel: the speaker's settings.
      rng: the utterance's own generator.

    Returns:
      The int16 result, and the values drawn for this utterance (see `draw_utterance`).
    """
    x = wave.astype(np.float64) / 32768.0
    rms = np.sqrt(np.mean(x**2))
    if rms == 0:
        raise ValueError("Cannot augment a silent utterance")
    drawn = draw_utterance(channel, rng)
    x *= 10 ** ((REFERENCE_DBFS + drawn["gain_db"]) / 20) / rms
    if channel.noise is not None:
        x = add_noise(x, drawn["snr_db"], channel.noise, rng)
    peak = np.max(np.abs(x))
    if peak > 0.99:  # scale speech and noise together: keeps the SNR, avoids clipping
        x *= 0.99 / peak
    return np.round(x * 32767.0).astype(np.int16), drawn
