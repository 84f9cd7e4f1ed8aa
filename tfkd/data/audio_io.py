"""Audio decoding and resampling: the one tfkd module that reads audio files.

Decoding goes through libsndfile (libFLAC for FLAC) via `soundfile`, in a child process:
- libFLAC checks every frame's CRC, so a flipped byte is an error. tensorflow-io 0.37.1's
  `decode_flac` (dr_flac) returned such a file with a 4,096-sample frame silently altered, and
  spun at 100 % CPU forever on a file whose frames are garbage.
- A decoder that never returns cannot be interrupted from Python inside its own process; a child
  process can be killed. `decode` waits `timeout_s` for the child, then kills it, reports the file
  as corrupt and starts a fresh child for the next file. The child exits when its parent dies
  (its request pipe reaches EOF).

tensorflow-io stays the resampler (`resample`), imported lazily so that the decoder child starts
without TensorFlow. Containers are checked in Python (FLAC STREAMINFO, WAV `fmt `/`data` chunks)
before decoding, so that a file that is not what its name says gets a message saying what it is,
and a decoded length shorter than the header promises is reported as truncation.
"""

from __future__ import annotations

import atexit
import dataclasses
import io
import os
import re
import struct
import subprocess
import sys
import threading
from multiprocessing.connection import Connection

import numpy as np

# Generous: a 35 s LibriSpeech utterance decodes in ~10 ms; a corrupt file must not stop a run.
DEFAULT_TIMEOUT_S = 30.0
# What to do about a damaged file, appended to every corrupt-audio message.
_FIX = "re-download or re-extract it"


class AudioDecodeError(ValueError):
    """The audio could not be read; the message names the file."""


class CorruptAudioError(AudioDecodeError):
    """The file is damaged or not audio: bad header, truncated, failed CRC, or decoder failure."""


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


def _flac_start(data: bytes) -> int:
    """Offset of `fLaC` after an optional ID3v2 tag (size: a 4 x 7-bit "syncsafe" integer)."""
    if data[:3] == b"ID3" and len(data) >= 10:
        size = 0
        for b in data[6:10]:
            size = (size << 7) | (b & 0x7F)
        return 10 + size
    return 0


_MAGIC = [
    (b"OggS", "an Ogg stream (Vorbis/Opus/Ogg FLAC)"),
    (b"ID3", "an MP3 file (ID3 tag)"),
    (b"\xff\xfb", "an MP3 file"),
    (b"\xff\xf3", "an MP3 file"),
    (b"\x1aE\xdf\xa3", "a Matroska/WebM file"),
    (b"NIST_1A", "a NIST SPHERE file"),
    (b"FORM", "an AIFF file"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "a gzip archive"),
]


def describe(data: bytes) -> str:
    """What the first bytes of a file look like, for messages ("a FLAC stream", "text '...'")."""
    if not data:
        return "an empty file"
    pos = _flac_start(data)
    if data[pos : pos + 4] == b"fLaC":
        return "a FLAC stream"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "a RIFF/WAVE file"
    if data[4:8] == b"ftyp":
        return "an MP4/M4A file"
    for magic, what in _MAGIC:
        if data.startswith(magic):
            return what
    head = data[:64]
    if not head.strip(b"\x00"):
        return "only zero bytes"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        kind = "HTML/XML" if text.lstrip().startswith("<") else "text"
        return f"{kind} ({text[:24]!r})"
    return f"unrecognised bytes ({data[:8].hex(' ')} ...)"


def _not_audio(data: bytes, name: str) -> CorruptAudioError:
    ext = os.path.splitext(name)[1].lower()
    expected = {".flac": "a FLAC file ('fLaC' header)", ".wav": "a RIFF/WAVE file"}.get(
        ext, "FLAC or WAV"
    )
    return CorruptAudioError(f"{name}: not {expected}: it holds {describe(data)}; {_FIX}")


def _flac_info(data: bytes, name: str) -> AudioInfo:
    pos = _flac_start(data)
    if data[pos : pos + 4] != b"fLaC":
        raise _not_audio(data, name)
    if len(data) < pos + 8 + 34:
        raise CorruptAudioError(f"{name}: truncated FLAC: no complete STREAMINFO; {_FIX}")
    block_type = data[pos + 4] & 0x7F
    if block_type != 0:
        raise CorruptAudioError(f"{name}: FLAC metadata does not start with STREAMINFO; {_FIX}")
    (packed,) = struct.unpack(">Q", data[pos + 18 : pos + 26])
    rate = packed >> 44
    channels = ((packed >> 41) & 0x7) + 1
    bits = ((packed >> 36) & 0x1F) + 1
    total = packed & ((1 << 36) - 1)
    if rate == 0:
        raise CorruptAudioError(f"{name}: FLAC STREAMINFO has sample rate 0; {_FIX}")
    return AudioInfo("flac", rate, channels, bits, total or None)


def _wav_info(data: bytes, name: str) -> AudioInfo:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise _not_audio(data, name)
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise CorruptAudioError(f"{name}: WAV 'fmt ' chunk is truncated; {_FIX}")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[body : body + 16])
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise CorruptAudioError(f"{name}: WAV 'data' chunk before 'fmt ' chunk; {_FIX}")
            tag, channels, rate, bits = fmt
            if tag not in (1, 0xFFFE):
                raise UnsupportedAudioError(f"{name}: WAV format tag {tag} is not integer PCM")
            if rate == 0 or channels == 0:
                raise CorruptAudioError(
                    f"{name}: WAV header has rate {rate}, {channels} channels; {_FIX}"
                )
            frame = channels * max(bits // 8, 1)
            if body + size > len(data):
                raise CorruptAudioError(
                    f"{name}: truncated WAV: 'data' chunk declares {size} bytes, "
                    f"{len(data) - body} present; {_FIX}"
                )
            return AudioInfo("wav", rate, channels, bits, size // frame)
        pos = body + size + (size & 1)  # chunks are word aligned
    raise CorruptAudioError(f"{name}: WAV file has no 'data' chunk; {_FIX}")


def probe(data: bytes, name: str = "<bytes>") -> AudioInfo:
    """Reads the container header of FLAC or WAV bytes without decoding.

    The content decides the container, not the file name; a file that is neither gets a
    message naming what the name promised and what the bytes look like.

    Raises:
        CorruptAudioError: for an unknown or damaged header.
    """
    if data[:4] == b"RIFF":
        return _wav_info(data, name)
    if os.path.splitext(name)[1].lower() == ".wav" and data[_flac_start(data) :][:4] != b"fLaC":
        raise _not_audio(data, name)
    return _flac_info(data, name)


# ---- the decoder child --------------------------------------------------------------------------

# The libFLAC error statuses libsndfile writes to its log, in words.
_FLAC_STATUS = re.compile(r"FLAC__STREAM_DECODER_ERROR_STATUS_(\w+)")


def _decode_here(data: bytes) -> tuple:
    """Runs in the child: ("ok", pcm int16 bytes, rate, channels) or ("error", text)."""
    import soundfile as sf

    try:
        f = sf.SoundFile(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 -- reported to the parent as the file's error
        return ("error", str(e))
    with f:
        try:
            pcm = f.read(dtype="int16", always_2d=True)
        except Exception as e:  # noqa: BLE001
            statuses = sorted(set(_FLAC_STATUS.findall(f.extra_info)))
            words = ", ".join(s.lower().replace("_", " ").replace("crc", "CRC") for s in statuses)
            return ("error", words or str(e))
        return ("ok", np.ascontiguousarray(pcm).tobytes(), f.samplerate, f.channels)


def _serve(read_fd: int, write_fd: int) -> None:
    """The child's loop: one file's bytes in, one `_decode_here` tuple out, until EOF."""
    requests, replies = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    while True:
        try:
            data = requests.recv_bytes()
        except (EOFError, OSError):  # the parent closed the pipe or died
            return
        try:
            replies.send(_decode_here(data))
        except (BrokenPipeError, OSError):
            return


_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); from tfkd.data import audio_io; "
    "audio_io._serve(int(sys.argv[2]), int(sys.argv[3]))"
)


class _DecoderProcess:
    """A child process that decodes, killed and replaced when a file takes too long."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def _start(self) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, _PACKAGE_ROOT, str(req_r), str(rep_w)],
                pass_fds=(req_r, rep_w),
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(req_r)
            os.close(rep_w)
        self._requests = Connection(req_w, readable=False)
        self._replies = Connection(rep_r, writable=False)
        self._pid = os.getpid()

    def close(self) -> None:
        if self._proc is None:
            return
        if self._pid == os.getpid():  # a forked copy must not touch its parent's child
            self._requests.close()
            self._replies.close()
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def run(self, data: bytes, name: str, timeout_s: float) -> tuple:
        with self._lock:
            if self._proc is None or self._pid != os.getpid() or self._proc.poll() is not None:
                self.close()
                self._start()
            try:
                self._requests.send_bytes(data)
                ready = self._replies.poll(timeout_s)
                if ready:
                    return self._replies.recv()
            except (EOFError, OSError):
                code = self._proc.wait()
                self.close()
                raise CorruptAudioError(
                    f"{name}: the audio decoder crashed on this file (exit code {code}); {_FIX}"
                ) from None
            self.close()
            raise CorruptAudioError(
                f"{name}: decoding took longer than {timeout_s:g} s and was stopped "
                f"(corrupt frames make decoders loop); {_FIX}"
            )


_decoder = _DecoderProcess()
atexit.register(_decoder.close)


def decode(
    data: bytes, name: str = "<bytes>", timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[np.ndarray, int]:
    """Decodes mono 16-bit FLAC or WAV bytes with libsndfile (libFLAC), in a child process.

    Args:
        data: the file's bytes.
        name: used in error messages (normally the path).
        timeout_s: the longest one decode may take; then the child is killed.

    Returns:
        (pcm, sample_rate): int16 [N] samples and the rate in Hz.

    Raises:
        CorruptAudioError: damaged header, failed frame CRC or lost sync, decoder crash or
            timeout, truncation, or no samples.
        UnsupportedAudioError: more than one channel or not 16-bit.
    """
    info = probe(data, name)
    if info.num_channels != 1:
        raise UnsupportedAudioError(f"{name}: {info.num_channels} channels; tfkd expects mono")
    if info.bits_per_sample != 16:
        raise UnsupportedAudioError(f"{name}: {info.bits_per_sample}-bit; tfkd expects 16-bit")
    reply = _decoder.run(data, name, timeout_s)
    if reply[0] != "ok":
        if info.container == "flac":
            raise CorruptAudioError(
                f"{name}: corrupt or truncated FLAC ({reply[1]}; `flac -t` fails it too); {_FIX}"
            )
        raise CorruptAudioError(f"{name}: corrupt WAV ({reply[1]}); {_FIX}")
    _, raw, rate, channels = reply
    pcm = np.frombuffer(raw, np.int16)
    if channels != 1 or rate != info.sample_rate:
        raise CorruptAudioError(
            f"{name}: the header says {info.sample_rate} Hz mono, the decoder found {rate} Hz, "
            f"{channels} channels; {_FIX}"
        )
    if info.num_samples is not None and pcm.shape[0] != info.num_samples:
        raise CorruptAudioError(
            f"{name}: truncated: decoded {pcm.shape[0]} samples, header says {info.num_samples}; "
            f"{_FIX}"
        )
    if pcm.shape[0] == 0:
        raise CorruptAudioError(f"{name}: no audio samples")
    return pcm, info.sample_rate


def read_audio(
    path: str | os.PathLike, timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[np.ndarray, int]:
    """Reads and decodes a mono 16-bit FLAC or WAV file; see `decode`.

    Returns:
        (pcm, sample_rate): int16 [N] and Hz.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    return decode(data, path, timeout_s)


def resample(pcm: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resamples int16 [N] audio with `tfio.audio.resample`.

    Returns:
        int16 [round(N * rate_out / rate_in)] (as tfio computes it), rounded and clipped.
    """
    if rate_in == rate_out:
        return np.asarray(pcm, np.int16)
    import tensorflow as tf  # lazily: the decoder child imports this module without TF
    import tensorflow_io as tfio

    x = tf.constant(np.asarray(pcm, np.float32)[:, None])
    y = tfio.audio.resample(x, rate_in=rate_in, rate_out=rate_out).numpy()[:, 0]
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)
