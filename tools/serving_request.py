"""Builds a TF Serving REST predict body from a WAV/FLAC file.

Usage:
  python tools/serving_request.py audio.wav > body.json
  curl -d @body.json http://localhost:8501/v1/models/tfkd:predict

  python tools/serving_request.py audio.wav --signature transcribe_nbest

Output: {"signature_name": ..., "inputs": {"waveform": [[...]], "waveform_length": [N]}} (the
columnar "inputs" format), samples as floats in [-1, 1) at 16 kHz.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfkd import cli  # noqa: E402  (after the path; no TensorFlow)


def request_body(waveform, signature="serving_default", token_ids=None, token_lengths=None):
    """The REST body for one utterance (`waveform`: sequence of float samples)."""
    inputs = {
        "waveform": [[round(float(x), 6) for x in waveform]],
        "waveform_length": [len(waveform)],
    }
    if signature == "score_hypotheses":
        if token_ids is None:
            raise ValueError("score_hypotheses needs token ids")
        inputs["token_ids"] = [token_ids]
        inputs["token_lengths"] = [token_lengths or [len(t) for t in token_ids]]
    return {"signature_name": signature, "inputs": inputs}


def _token_ids(text):
    """--token_ids as a list of N non-empty lists of ints; UsageError otherwise."""
    try:
        ids = json.loads(text)
    except ValueError as e:
        raise cli.UsageError(f"--token_ids is not JSON ({e}): expected [[ids...], ...]") from e
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(t, list) and t and all(type(i) is int for i in t) for t in ids)
    ):
        raise cli.UsageError(
            f"--token_ids={text}: expected [[ids...], ...], non-empty lists of ints"
        )
    return ids


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("audio", help="WAV or FLAC file")
    parser.add_argument(
        "--signature",
        default="serving_default",
        choices=("serving_default", "transcribe_nbest", "score_hypotheses"),
    )
    parser.add_argument(
        "--token_ids", default=None, help="score_hypotheses: JSON [[ids...], ...] (N hypotheses)"
    )
    parser.add_argument("--sample_rate", type=int, default=16000)
    args = parser.parse_args(argv)
    cli.check_at_least("--sample_rate", args.sample_rate, 1)
    token_ids = _token_ids(args.token_ids) if args.token_ids else None
    if args.signature == "score_hypotheses" and token_ids is None:
        raise cli.UsageError("--signature=score_hypotheses needs --token_ids='[[ids...], ...]'")

    from tfkd.data import audio_io

    pcm, rate = audio_io.read_audio(args.audio)
    if rate != args.sample_rate:
        pcm = audio_io.resample(pcm, rate, args.sample_rate)
    samples = pcm.astype("float32") / 32768.0  # as the training records are read
    if token_ids is not None:
        width = max(len(t) for t in token_ids)
        lengths = [len(t) for t in token_ids]
        token_ids = [t + [0] * (width - len(t)) for t in token_ids]
    else:
        lengths = None
    body = request_body(samples.tolist(), args.signature, token_ids, lengths)
    json.dump(body, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    # A missing or undecodable audio file, bad --token_ids: one message, exit code 2.
    raise SystemExit(cli.run(main, "tools/serving_request.py"))
