import numpy as np
import pytest
from audio_fixtures import signal, truncate, write_flac, write_wav

from tfkd.data import audio_io


def test_flac_decodes_sample_exact(tmp_path):
    pcm = signal(1, 12345)
    write_flac(str(tmp_path / "a.flac"), pcm)
    out, rate = audio_io.read_audio(tmp_path / "a.flac")
    assert rate == 16000
    assert out.dtype == np.int16 and out.shape == (12345,)
    np.testing.assert_array_equal(out, pcm)
    info = audio_io.probe((tmp_path / "a.flac").read_bytes())
    assert info == audio_io.AudioInfo("flac", 16000, 1, 16, 12345)


def test_wav_decodes_sample_exact_and_reports_rate(tmp_path):
    pcm = signal(2, 5000, rate=22050)
    write_wav(str(tmp_path / "a.wav"), pcm, rate=22050)
    out, rate = audio_io.read_audio(str(tmp_path / "a.wav"))
    assert rate == 22050
    np.testing.assert_array_equal(out, pcm)


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.9])
def test_truncated_flac_is_a_clear_error(tmp_path, fraction):
    path = str(tmp_path / "cut.flac")
    write_flac(path, signal(3, 40000))
    truncate(path, fraction)
    with pytest.raises(audio_io.CorruptAudioError, match="cut.flac") as e:
        audio_io.read_audio(path)
    # The header survives a cut at 90%, so it is the decoder that must notice.
    assert "truncated" in str(e.value)
    assert "function_node" not in str(e.value)


def test_truncated_wav_and_garbage_are_clear_errors(tmp_path):
    path = str(tmp_path / "cut.wav")
    write_wav(path, signal(4, 8000))
    truncate(path, 0.5)
    with pytest.raises(audio_io.CorruptAudioError, match="cut.wav: truncated WAV"):
        audio_io.read_audio(path)
    (tmp_path / "junk.flac").write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(audio_io.CorruptAudioError, match=r"junk.flac: not a FLAC file \('fLaC'"):
        audio_io.read_audio(tmp_path / "junk.flac")
    with pytest.raises(audio_io.CorruptAudioError, match="<bytes>"):
        audio_io.decode(b"")


def test_stereo_and_24_bit_are_unsupported(tmp_path):
    stereo = np.stack([signal(5, 3000), signal(6, 3000)], axis=1)
    write_flac(str(tmp_path / "st.flac"), stereo)
    with pytest.raises(audio_io.UnsupportedAudioError, match="st.flac: 2 channels"):
        audio_io.read_audio(tmp_path / "st.flac")
    write_flac(str(tmp_path / "b24.flac"), signal(7, 3000), bits=24)
    with pytest.raises(audio_io.UnsupportedAudioError, match="b24.flac: 24-bit"):
        audio_io.read_audio(tmp_path / "b24.flac")


def test_resample_keeps_a_tone():
    rate_in, n = 22050, 22050
    t = np.arange(n) / rate_in
    tone = np.round(10000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    out = audio_io.resample(tone, rate_in, 16000)
    assert out.dtype == np.int16
    assert abs(out.shape[0] - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(out[1000:-1000].astype(np.float64)))
    peak_hz = np.argmax(spectrum) * 16000 / (out.shape[0] - 2000)
    assert abs(peak_hz - 1000) < 2
    assert 9000 < np.abs(out[1000:-1000]).max() <= 10100
    np.testing.assert_array_equal(audio_io.resample(tone, 16000, 16000), tone)
