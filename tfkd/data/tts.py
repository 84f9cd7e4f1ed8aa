"""Offline text-to-speech through Debian's espeak-ng, flite and festival.

A `Voice` is one "speaker": an engine, one of its voices, a speaking rate and a pitch offset.
Every engine's output is converted by sox to 16 kHz mono int16.
"""

import dataclasses
import os
import shutil
import subprocess
import tempfile

import numpy as np

SAMPLE_RATE = 16000

# Debian packages that provide each engine and tool (used in error messages).
PACKAGES = {
    "espeak-ng": "espeak-ng",
    "flite": "flite",
    "festival": "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts",
    "sox": "sox",
}
INSTALL_HINT = "bash tools/install_system_deps.sh (or, as root: apt-get install -y {packages})"

# espeak-ng's eight English accents and the variants that still sound like speech.
ESPEAK_ACCENTS = (
    "en-gb",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "klatt")
FLITE_VOICES = ("kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
FESTIVAL_VOICE_DIRS = {
    "kal_diphone": "/usr/share/festival/voices/english/kal_diphone",
    "ked_diphone": "/usr/share/festival/voices/english/ked_diphone",
    "cmu_us_slt_arctic_hts": "/usr/share/festival/voices/us/cmu_us_slt_arctic_hts",
}
# Approximate mean F0 (Hz) of each voice, so that a pitch offset in semitones can be turned into
# the absolute F0 target that flite and festival's diphone voices take.
NATIVE_F0 = {"kal16": 95.0, "awb": 125.0, "rms": 100.0, "slt": 170.0}
NATIVE_F0.update({"kal_diphone": 105.0, "ked_diphone": 105.0})


class MissingEngineError(RuntimeError):
    """A TTS engine, voice or sox is not installed."""


@dataclasses.dataclass(frozen=True)
class Voice:
    """One synthetic speaker.

    Attributes:
      engine: "espeak-ng", "flite" or "festival".
      voice: engine voice; for espeak-ng "<accent>" or "<accent>+<variant>".
      rate: speaking-rate factor (1.0 = the voice's default, 1.2 = 20% faster).
      pitch: pitch offset in semitones from the voice's default.
    """

    engine: str
    voice: str
    rate: float = 1.0
    pitch: float = 0.0


def check_engines(engines, path: str | None = None) -> None:
    """Raises MissingEngineError naming the Debian packages if an engine or sox is missing.

    Args:
      engines: engine names to check.
      path: search path for executables (default: $PATH).
    """
    missing = [e for e in ["sox", *sorted(set(engines))] if shutil.which(e, path=path) is None]
    if "festival" in engines and "festival" not in missing:
        if any(not os.path.isdir(d) for d in FESTIVAL_VOICE_DIRS.values()):
            missing.append("festival")
    if "flite" in engines and "flite" not in missing:
        listed = subprocess.run(
            [shutil.which("flite", path=path), "-lv"], capture_output=True, text=True
        ).stdout.split()
        if any(v not in listed for v in FLITE_VOICES):
            missing.append("flite")  # a flite build without the built-in CMU voices
    if missing:
        packages = " ".join(PACKAGES[m] for m in missing)
        raise MissingEngineError(
            f"Missing TTS tools: {', '.join(missing)}. Install them with "
            + INSTALL_HINT.format(packages=packages)
        )


def _espeak_cmd(v: Voice, text: str, out: str) -> list[str]:
    # espeak-ng: -s is words per minute (default 175), -p is pitch 0-99 (default 50); about
    # 6 pitch units per semitone gives a comparable range to the other engines.
    pitch = int(np.clip(round(50 + 6 * v.pitch), 0, 99))
    return ["espeak-ng", "-v", v.voice, "-s", str(round(175 * v.rate)), "-p", str(pitch), "-w",
            out, text]  # fmt: skip


def _flite_cmd(v: Voice, text: str, out: str) -> list[str]:
    f0 = NATIVE_F0[v.voice] * 2 ** (v.pitch / 12)
    return ["flite", "-voice", v.voice, "-t", text, "-o", out,
            "--setf", f"duration_stretch={1 / v.rate:.4f}",
            "--setf", f"int_f0_target_mean={f0:.1f}"]  # fmt: skip


def festival_script(v: Voice, texts: list[str], outs: list[str]) -> str:
    """A Scheme script that synthesises all `texts` with one festival process."""
    lines = [f"(voice_{v.voice})"]
    if v.voice.endswith("_hts"):
        # The HTS engine ignores Duration_Stretch and the diphone F0 model; it takes a speed
        # ratio, and its pitch offset is applied by sox afterwards (see `sox_pitch_cents`).
        lines.append(f'(set! hts_engine_params (append hts_engine_params (list (list "-r" '
                     f"{v.rate:.4f}))))")  # fmt: skip
    else:
        f0 = NATIVE_F0[v.voice] * 2 ** (v.pitch / 12)
        lines.append(f"(Parameter.set 'Duration_Stretch {1 / v.rate:.4f})")
        # assoc finds the first entry, so prepending overrides the voice's own target.
        lines.append(f"(set! int_lr_params (cons (list 'target_f0_mean {f0:.1f}) int_lr_params))")
    for text, out in zip(texts, outs, strict=True):
        lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{out}" \'riff)')
    return "\n".join(lines) + "\n"


def sox_pitch_cents(v: Voice) -> float:
    """Pitch shift (cents) that sox must apply because the engine cannot do it natively."""
    return 100.0 * v.pitch if v.engine == "festival" and v.voice.endswith("_hts") else 0.0


def to_16k(path: str, effects: tuple[str, ...] = ()) -> np.ndarray:
    """Reads any WAV file through sox as 16 kHz mono int16, after optional sox effects.

    Dither is off (-D), so the same input always gives the same samples.
    """
    cmd = ["sox", "-D", "-V1", path, "-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1",
           "-r", str(SAMPLE_RATE), "-", *effects]  # fmt: skip
    raw = subprocess.run(cmd, check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype="<i2").copy()


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")


def synthesize(
    voice: Voice, texts: list[str], effects: list[tuple[str, ...]] | None = None
) -> list[np.ndarray]:
    """Synthesises `texts` with one voice.

    Args:
      voice: the speaker.
      texts: normalised sentences (lower-case letters, apostrophes and spaces only).
      effects: optional extra sox effects per text (e.g. ``("tempo", "1.05")``).

    Returns:
      One int16 waveform at 16 kHz per text.

    Raises:
      MissingEngineError: the engine is not installed.
      RuntimeError: the engine failed or produced no audio.
    """
    check_engines([voice.engine])
    effects = effects or [()] * len(texts)
    cents = sox_pitch_cents(voice)
    base = ("pitch", f"{cents:.1f}") if cents else ()
    with tempfile.TemporaryDirectory(prefix="tfkd_tts_") as tmp:
        outs = [os.path.join(tmp, f"{i:05d}.wav") for i in range(len(texts))]
        if voice.engine == "festival":
            script = os.path.join(tmp, "batch.scm")
            with open(script, "w") as f:
                f.write(festival_script(voice, texts, outs))
            _run(["festival", "--batch", script], f"festival ({voice.voice})")
        else:
            make = {"espeak-ng": _espeak_cmd, "flite": _flite_cmd}.get(voice.engine)
            if make is None:
                raise ValueError(f"Unknown TTS engine {voice.engine!r}")
            for text, out in zip(texts, outs, strict=True):
                _run(make(voice, text, out), f"{voice.engine} ({voice.voice})")
        waves = []
        for text, out, fx in zip(texts, outs, effects, strict=True):
            if not os.path.exists(out):
                raise RuntimeError(f"{voice.engine} ({voice.voice}) wrote no audio for {text!r}")
            wave = to_16k(out, base + tuple(fx))
            if not np.any(wave):
                raise RuntimeError(f"{voice.engine} ({voice.voice}) wrote silence for {text!r}")
            waves.append(wave)
    return waves
