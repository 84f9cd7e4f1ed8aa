"""Tiny audio fixtures written with the stdlib `wave` module and the `sox` CLI (a system dep)."""

import os
import subprocess
import wave

import numpy as np


def signal(seed: int, num_samples: int, rate: int = 16000) -> np.ndarray:
    """Deterministic int16 [N]: a seed-dependent tone plus noise, using most of the range."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / rate
    x = 12000 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + rng.normal(0, 3000, num_samples)
    x[:4] = [32767, -32768, 0, -1]  # the extremes must survive the round trip too
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def write_wav(path: str, pcm: np.ndarray, rate: int = 16000) -> None:
    """Writes int16 [N] (mono) or [N, C] as a 16-bit WAV."""
    pcm = np.asarray(pcm, np.int16)
    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with wave.open(path, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def write_flac(path: str, pcm: np.ndarray, rate: int = 16000, bits: int = 16) -> None:
    """Writes int16 [N] or [N, C] as FLAC through sox (lossless at 16 bits)."""
    tmp = path + ".tmp.wav"
    write_wav(tmp, pcm, rate)
    subprocess.run(["sox", tmp, "-b", str(bits), path], check=True)
    os.remove(tmp)


def truncate(path: str, fraction: float) -> None:
    """Keeps the first `fraction` of the file's bytes."""
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * fraction)])


def flip_bits(path: str, offset: int, mask: int = 0x10) -> None:
    """XORs the byte at `offset` (negative: from the end) with `mask`, in place."""
    with open(path, "r+b") as f:
        f.seek(offset, os.SEEK_SET if offset >= 0 else os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ mask]))


def garbage_frames(path: str, keep: float = 1 / 3, seed: int = 0) -> None:
    """Keeps the first `keep` of the file's bytes (the header intact) and replaces the rest with
    random bytes, keeping the size: the FLAC that hung tensorflow-io's decoder."""
    with open(path, "rb") as f:
        data = f.read()
    cut = int(len(data) * keep)
    noise = np.random.default_rng(seed).integers(0, 256, len(data) - cut, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(data[:cut] + noise.tobytes())


def random_bytes(path: str, num_bytes: int, seed: int = 0) -> None:
    """Writes `num_bytes` random bytes (e.g. a `.wav` that is no audio at all)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(seed).integers(0, 256, num_bytes, dtype=np.uint8).tobytes())
