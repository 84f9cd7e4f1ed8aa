"""Audio decoding and resampling: the one tfkd module that imports tensorflow_io.

tensorflow-io 0.37.1's compiled ops load on TF 2.16/2.17 only, so keeping every use here means a
move to a newer TF (or another decoder) touches this file alone. Containers are checked in Python
(FLAC STREAMINFO, WAV `fmt `/`data` chunks) before the op runs, because the ops' own errors
("unable to seek to: 0") do not say what is wrong, and a decoded length shorter than the header
promises is the clearest sign of a truncated file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct

import numpy as np
import tensorflow as tf
import tensorflow_io as tfio


class AudioDecodeError(ValueError):
    """The audio could not be read; the message names the file."""


class CorruptAudioError(AudioDecodeError):
    """The file is damaged: bad header, truncated, or the decoder failed."""


class UnsupportedAudioError(AudioDecodeError):
    """The file is valid but not mono 16-bit FLAC/WAV."""


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What the container header says.

    `num_samples` is per channel, or None when the header leaves it open (FLAC streams may).
    """

    container: str  # "flac" or "wav"
    sample_rate: int
    num_channels: int
    bits_per_sample: int
    num_samples: int | None


def _flac_info(data: bytes, name: str) -> AudioInfo:
    pos = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        # An ID3v2 tag may precede the stream; its size is a 4 x 7-bit "syncsafe" integer.
        size = 0
        for b in data[6:10]:
            size = (size << 7) | (b & 0x7F)
        pos = 10 + size
    if data[pos : pos + 4] != b"fLaC" or len(data) < pos + 8 + 34:
        raise CorruptAudioError(f"{name}: not a FLAC stream (no 'fLaC' header with STREAMINFO)")
    block_type = data[pos + 4] & 0x7F
    if block_type != 0:
        raise CorruptAudioError(f"{name}: FLAC metadata does not start with STREAMINFO")
    (packed,) = struct.unpack(">Q", data[pos + 18 : pos + 26])
    rate = packed >> 44
    channels = ((packed >> 41) & 0x7) + 1
    bits = ((packed >> 36) & 0x1F) + 1
    total = packed & ((1 << 36) - 1)
    if rate == 0:
        raise CorruptAudioError(f"{name}: FLAC STREAMINFO has sample rate 0")
    return AudioInfo("flac", rate, channels, bits, total or None)


def _wav_info(data: bytes, name: str) -> tuple[AudioInfo, int]:
    """Returns the header info and the byte offset where the `data` chunk's payload starts."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise CorruptAudioError(f"{name}: not a RIFF/WAVE file")
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise CorruptAudioError(f"{name}: WAV 'fmt ' chunk is truncated")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[body : body + 16])
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise CorruptAudioError(f"{name}: WAV 'data' chunk before 'fmt ' chunk")
            tag, channels, rate, bits = fmt
            if tag not in (1, 0xFFFE):
                raise UnsupportedAudioError(f"{name}: WAV format tag {tag} is not integer PCM")
            if rate == 0 or channels == 0:
                raise CorruptAudioError(f"{name}: WAV header has rate {rate}, {channels} channels")
            frame = channels * max(bits // 8, 1)
            if body + size > len(data):
                raise CorruptAudioError(
                    f"{name}: truncated WAV: 'data' chunk declares {size} bytes, "
                    f"{len(data) - body} present"
                )
            return AudioInfo("wav", rate, channels, bits, size // frame), body
        pos = body + size + (size & 1)  # chunks are word aligned
    raise CorruptAudioError(f"{name}: WAV file has no 'data' chunk")


def _op_error_text(e: tf.errors.OpError) -> str:
    # Drop the "{{function_node ...}}" prefix and " [Op:...]" suffix TF wraps around the cause.
    text = re.sub(r"\{\{.*?\}\}", "", e.message)
    return re.sub(r"\s*\[Op:[^\]]*\]", "", text).strip() or type(e).__name__


def probe(data: bytes, name: str = "<bytes>") -> AudioInfo:
    """Reads the container header of FLAC or WAV bytes without decoding.

    Raises:
        CorruptAudioError: for an unknown or damaged header.
    """
    if data[:4] == b"RIFF":
        return _wav_info(data, name)[0]
    return _flac_info(data, name)


def decode(data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, int]:
    """Decodes mono 16-bit FLAC or WAV bytes with tensorflow-io.

    Args:
        data: the file's bytes.
        name: used in error messages (normally the path).

    Returns:
        (pcm, sample_rate): int16 [N] samples and the rate in Hz.

    Raises:
        CorruptAudioError: damaged header, decoder failure, truncation, or no samples.
        UnsupportedAudioError: more than one channel or not 16-bit.
    """
    info = probe(data, name)
    if info.num_channels != 1:
        raise UnsupportedAudioError(f"{name}: {info.num_channels} channels; tfkd expects mono")
    if info.bits_per_sample != 16:
        raise UnsupportedAudioError(f"{name}: {info.bits_per_sample}-bit; tfkd expects 16-bit")
    try:
        if info.container == "flac":
            pcm = tfio.audio.decode_flac(data, dtype=tf.int16)
        else:
            pcm = tfio.audio.decode_wav(data, dtype=tf.int16)
        pcm = pcm.numpy()
    except tf.errors.OpError as e:
        raise CorruptAudioError(
            f"{name}: {info.container.upper()} decoder failed (corrupt or truncated file): "
            f"{_op_error_text(e)}"
        ) from None
    pcm = pcm.reshape(-1)
    if info.num_samples is not None and pcm.shape[0] != info.num_samples:
        raise CorruptAudioError(
            f"{name}: truncated: decoded {pcm.shape[0]} samples, header says {info.num_samples}"
        )
    if pcm.shape[0] == 0:
        raise CorruptAudioError(f"{name}: no audio samples")
    return pcm.astype(np.int16, copy=False), info.sample_rate


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Reads and decodes a mono 16-bit FLAC or WAV file; see `decode`.

    Returns:
        (pcm, sample_rate): int16 [N] and Hz.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    return decode(data, path)


def resample(pcm: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resamples int16 [N] audio with `tfio.audio.resample`.

    Returns:
        int16 [round(N * rate_out / rate_in)] (as tfio computes it), rounded and clipped.
    """
    if rate_in == rate_out:
        return np.asarray(pcm, np.int16)
    x = tf.constant(np.asarray(pcm, np.float32)[:, None])
    y = tfio.audio.resample(x, rate_in=rate_in, rate_out=rate_out).numpy()[:, 0]
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)
