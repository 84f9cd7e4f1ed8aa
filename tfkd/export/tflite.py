"""TFLite students: conversion (builtins only, in a subprocess), interpreter helpers, streaming.

Conversion path (TF 2.17): the graphs of `tfkd.export.streaming` are written with
`keras.export.ExportArchive` and converted with `TFLiteConverter.from_saved_model` restricted to
`TFLITE_BUILTINS`. That restriction makes the converter fail loudly if any op would need Flex
(`SELECT_TF_OPS`); `check_builtin_ops` re-checks the result. `from_concrete_functions` on the same
graphs can abort the whole process (LLVM error), and the converter may abort on other inputs too,
so `convert_in_subprocess` runs it in a child process (`python -m tfkd.export.tflite`).

Quantisation: `float32`; `dynamic_int8` (int8 weights, float activations);
`full_int8` (int8 weights and activations calibrated on a representative dataset, float32 inputs
and outputs; ops without an int8 kernel, such as the FFT and the log of the front end, stay float,
so builtin float kernels are allowed next to the int8 ones).

Two models per student (see `tfkd.export.streaming`): `whole_<q>.tflite` (one utterance to
token ids) and `streaming_<q>.tflite` with `streaming_<q>.json` (chunk size and state layout),
driven on the host by `StreamingSession`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

QUANTIZATIONS = ("float32", "dynamic_int8", "full_int8")


def write_archive(fn, input_signature, trackables, path):
    """Writes `fn` as the `serve` endpoint of a `keras.export.ExportArchive` SavedModel."""
    import keras

    archive = keras.export.ExportArchive()
    for obj in trackables:
        archive.track(obj)
    archive.add_endpoint("serve", fn, input_signature=input_signature)
    archive.write_out(path, verbose=False)
    return path


def convert_saved_model(saved_model_dir, quantization="float32", representative=None):
    """Converts in this process (may abort it: prefer `convert_in_subprocess`).

    Args:
      saved_model_dir: an ExportArchive SavedModel with one `serve` endpoint.
      quantization: one of `QUANTIZATIONS`.
      representative: for `full_int8`, a list of input dicts {name: array} for calibration.

    Returns:
      The .tflite flatbuffer bytes.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "full_int8":
        if not representative:
            raise ValueError("full_int8 needs a representative dataset")
        converter.representative_dataset = lambda: iter(representative)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
    content = converter.convert()
    check_builtin_ops(content)
    return content


def convert_in_subprocess(
    saved_model_dir, output_path, quantization="float32", representative_path=None, timeout=1800
):
    """Runs `convert_saved_model` in a child process and writes `output_path`.

    Args:
      saved_model_dir, quantization: as in `convert_saved_model`.
      output_path: the .tflite file to write.
      representative_path: for `full_int8`, an `.npz` from `save_representative`.
      timeout: seconds.

    Raises:
      RuntimeError: the converter failed or aborted; the message holds the end of its log.
    """
    argv = [sys.executable, "-m", "tfkd.export.tflite", saved_model_dir, output_path, quantization]
    if representative_path:
        argv.append(representative_path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0 or not os.path.exists(output_path):
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        raise RuntimeError(
            f"TFLite conversion of {saved_model_dir} ({quantization}) failed ({how}):\n"
            + proc.stderr[-4000:]
        )
    return output_path


def save_representative(samples, path):
    """Writes calibration inputs (list of {name: array}) for `convert_in_subprocess`."""
    arrays = {f"{i}/{k}": v for i, s in enumerate(samples) for k, v in s.items()}
    np.savez(path, **arrays)
    return path


def _load_representative(path):
    data = np.load(path)
    samples = {}
    for key in data.files:
        i, name = key.split("/", 1)
        samples.setdefault(int(i), {})[name] = data[key]
    return [samples[i] for i in sorted(samples)]


def op_names(content=None, model_path=None):
    """Set of op names in a .tflite model (builtin names, `Flex...` or custom names)."""
    interpreter = tf.lite.Interpreter(model_content=content, model_path=model_path)
    return {d["op_name"] for d in interpreter._get_ops_details()}


def check_builtin_ops(content):
    """Raises RuntimeError if the model holds Flex (select TF) or custom ops."""
    ops = op_names(content)
    bad = sorted(o for o in ops if o.startswith("Flex") or o in ("CUSTOM", "DELEGATE"))
    if bad:
        raise RuntimeError(f"the TFLite model needs non-builtin ops {bad}; no Flex delegate")
    return ops


def _interpreter_class():
    """`ai_edge_litert`'s interpreter when installed (same API), else `tf.lite.Interpreter`."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    return Interpreter


class TFLiteRunner:
    """Runs the `serve` signature of a .tflite file, checking input shapes and dtypes first.

    Args:
      model_path: the .tflite file.
      num_threads: interpreter threads (1 for real-time-factor measurements).
    """

    def __init__(self, model_path, num_threads=1):
        self.model_path = model_path
        self.interpreter = _interpreter_class()(model_path=model_path, num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner()
        self.inputs = {
            name: (tuple(int(d) for d in detail["shape_signature"]), np.dtype(detail["dtype"]))
            for name, detail in self.runner.get_input_details().items()
        }

    def check_inputs(self, inputs):
        """Raises ValueError naming the input whose shape, dtype or name does not fit."""
        missing = sorted(set(self.inputs) - set(inputs))
        extra = sorted(set(inputs) - set(self.inputs))
        if missing or extra:
            raise ValueError(f"{self.model_path}: missing inputs {missing}, unknown inputs {extra}")
        for name, value in inputs.items():
            shape, dtype = self.inputs[name]
            value = np.asarray(value)
            ok = value.ndim == len(shape) and all(
                d == -1 or d == v for d, v in zip(shape, value.shape, strict=True)
            )
            if not ok:
                want = "[" + ", ".join("?" if d == -1 else str(d) for d in shape) + "]"
                raise ValueError(
                    f"{self.model_path}: input {name!r} must have shape {want}, got "
                    f"{list(value.shape)}"
                )
            if value.dtype != dtype:
                raise ValueError(
                    f"{self.model_path}: input {name!r} must be {dtype.name}, "
                    f"got {value.dtype.name}"
                )

    def __call__(self, **inputs):
        inputs = {k: np.asarray(v) for k, v in inputs.items()}
        self.check_inputs(inputs)
        return self.runner(**inputs)


def transcribe_whole(runner, waveform):
    """Token ids (list) of one utterance `waveform` [N] float32 with a whole-utterance runner."""
    waveform = np.asarray(waveform, np.float32)
    out = runner(waveform=waveform[None], waveform_length=np.array([waveform.shape[0]], np.int32))
    return out["token_ids"].tolist()


class StreamingSession:
    """Host-side driver of a streaming .tflite: push audio of any length, get tokens.

    Buffers samples into the model's fixed chunks, keeps the state between calls, and on
    `finish` runs the zero-padded last chunk. The first `history` samples of the stream only
    fill the feature state (see `tfkd.export.streaming`).

    Args:
      runner: `TFLiteRunner` of a streaming model.
      metadata: the model's JSON metadata (dict), from `load_metadata`.
    """

    def __init__(self, runner, metadata):
        self.runner, self.meta = runner, metadata
        self.chunk = int(metadata["chunk_samples"])
        self.history = int(metadata["history_samples"])
        self.names = metadata["state_names"]
        self.state = None
        self.buffer = np.zeros([0], np.float32)
        self.tokens, self.score = [], 0.0

    def _run(self, chunk, valid):
        inputs = {
            "audio_chunk": chunk[None].astype(np.float32),
            "valid_samples": np.array([valid], np.int32),
        }
        inputs.update(zip(self.names, self.state, strict=True))
        out = self.runner(**inputs)
        self.state = [out[f"state_{i}"] for i in range(len(self.names))]
        new = [int(t) for t in out["tokens"][0] if t > 0]
        self.tokens.extend(new)
        self.score += float(out["score"][0])
        return new

    def push(self, samples):
        """Adds samples [n]; returns the tokens decoded from the chunks completed by them."""
        self.buffer = np.concatenate([self.buffer, np.asarray(samples, np.float32)])
        if self.state is None:
            if len(self.buffer) < self.history:
                return []
            self.state = [np.asarray(s) for s in self.meta_initial_state()]
            self.state[self.names.index("audio")] = self.buffer[None, : self.history]
            self.buffer = self.buffer[self.history :]
        new = []
        while len(self.buffer) >= self.chunk:
            new += self._run(self.buffer[: self.chunk], self.chunk)
            self.buffer = self.buffer[self.chunk :]
        return new

    def finish(self):
        """Decodes the remaining samples (zero padded); returns their tokens."""
        if self.state is None or len(self.buffer) == 0:
            return []
        chunk = np.zeros([self.chunk], np.float32)
        chunk[: len(self.buffer)] = self.buffer
        new = self._run(chunk, len(self.buffer))
        self.buffer = np.zeros([0], np.float32)
        return new

    def meta_initial_state(self):
        return [
            np.zeros(s["shape"], s["dtype"])
            if "value" not in s
            else np.asarray(s["value"], s["dtype"])
            for s in self.meta["initial_state"]
        ]


def stream_waveform(runner, metadata, waveform, push_samples=None):
    """The finished `StreamingSession` (`tokens`, `score`) of `waveform` [N], pushed in pieces
    of `push_samples` (default: all at once)."""
    session = StreamingSession(runner, metadata)
    step = push_samples or len(waveform) or 1
    for start in range(0, len(waveform), step):
        session.push(waveform[start : start + step])
    session.finish()
    return session


def transcribe_streaming(runner, metadata, waveform, push_samples=None):
    """Token ids of `waveform` [N] through a `StreamingSession` (pushes of `push_samples`)."""
    return stream_waveform(runner, metadata, waveform, push_samples).tokens


def load_metadata(path):
    with open(path) as f:
        return json.load(f)


def export_student_tflite(
    model,
    frontend,
    output_dir,
    quantization="float32",
    chunk_ms=320,
    max_symbols_per_frame=3,
    representative_waveforms=None,
    prefix="student",
    kinds=("whole", "streaming"),
):
    """Writes `<prefix>_whole_<q>.tflite`, `<prefix>_streaming_<q>.tflite` and its `.json`.

    Args:
      model: a built causal transducer.
      frontend: its (built) `LogMel`.
      output_dir: destination directory.
      quantization: one of `QUANTIZATIONS`.
      chunk_ms: streaming chunk length (see `StreamingGraph`).
      max_symbols_per_frame: greedy label limit per encoder frame.
      representative_waveforms: for `full_int8`, a list of float32 [N] utterances (e.g. from
        the training records); calibration inputs are made by running the TF graphs on them.
      prefix: file name prefix.
      kinds: which models to write ("whole", "streaming").

    Returns:
      dict with the paths: `whole`, `streaming`, `metadata` (of the kinds written).
    """
    from tfkd.export import streaming

    os.makedirs(output_dir, exist_ok=True)
    if quantization == "full_int8" and "whole" in kinds:
        raise ValueError(
            "full_int8 is available for the streaming model only: calibrating the "
            "whole-utterance model (a WHILE loop over a Keras LSTM) crashes the TF 2.17 converter"
        )
    if quantization != "float32":
        frontend = streaming.RuntimeMelLogMel.like(frontend)
    graph = streaming.StreamingGraph(model, frontend, chunk_ms, max_symbols_per_frame)
    whole_fn = streaming.whole_utterance_fn(model, frontend, max_symbols_per_frame)
    whole_sig = [
        tf.TensorSpec([1, None], tf.float32, name="waveform"),
        tf.TensorSpec([1], tf.int32, name="waveform_length"),
    ]
    paths = {
        "whole": os.path.join(output_dir, f"{prefix}_whole_{quantization}.tflite"),
        "streaming": os.path.join(output_dir, f"{prefix}_streaming_{quantization}.tflite"),
        "metadata": os.path.join(output_dir, f"{prefix}_streaming_{quantization}.json"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        jobs = (
            ("whole", whole_fn, whole_sig, _whole_calibration),
            ("streaming", graph.step, graph.input_signature(), _streaming_calibration),
        )
        for kind, fn, sig, calibration in jobs:
            if kind not in kinds:
                del paths[kind]
                continue
            saved = write_archive(fn, sig, [model, frontend], os.path.join(tmp, kind))
            rep = None
            if quantization == "full_int8":
                if not representative_waveforms:
                    raise ValueError("full_int8 needs representative_waveforms")
                samples = calibration(graph, representative_waveforms)
                rep = save_representative(samples, os.path.join(tmp, f"{kind}.npz"))
            convert_in_subprocess(saved, paths[kind], quantization, rep)
    if "streaming" not in kinds:
        del paths["metadata"]
        return paths
    metadata = {
        "quantization": quantization,
        "sample_rate": frontend.sample_rate,
        "chunk_ms": chunk_ms,
        "chunk_samples": graph.chunk_samples,
        "history_samples": graph.history,
        "max_symbols_per_frame": graph.max_symbols,
        "vocab_size": int(model.vocab_size),
        "state_names": graph.state_names,
        "initial_state": [
            {"shape": list(s.shape), "dtype": np.dtype(s.dtype).name}
            if not np.any(s)
            else {"shape": list(s.shape), "dtype": np.dtype(s.dtype).name, "value": s.tolist()}
            for s in graph.initial_state(np.zeros([graph.history], np.float32))
        ],
        "inputs": "audio_chunk float32 [1, chunk_samples], valid_samples int32 [1], then the "
        "state tensors named in state_names (outputs state_<i> feed them back)",
        "outputs": "tokens int32 [1, frames*max_symbols] (0 = none), score float32 [1], "
        "log_probs float32 [1, frames, vocab], state_<i>",
    }
    with open(paths["metadata"], "w") as f:
        json.dump(metadata, f, indent=1)
    return paths


def read_utterances(file_pattern, limit=None):
    """(waveform float32 [N], text, token ids) of the utterances of tfkd records, in file order.

    Args:
      file_pattern: TFRecord glob (e.g. a test split).
      limit: stop after this many utterances.
    """
    from tfkd.data import pipeline

    dataset = pipeline.make_dataset(
        file_pattern, global_batch_size=1, with_text=True, deterministic=True
    )
    out = []
    for batch in dataset:
        n = int(batch["num_samples"][0])
        ids = batch["token_ids"][0, : int(batch["label_length"][0])].numpy().tolist()
        out.append((batch["waveform"][0, :n].numpy(), batch["text"][0].numpy().decode(), ids))
        if limit is not None and len(out) >= limit:
            break
    return out


def representative_waveforms(file_pattern, count=32):
    """Waveforms of the first `count` utterances of `file_pattern`, for full-int8 calibration."""
    return [wave for wave, _, _ in read_utterances(file_pattern, count)]


def _whole_calibration(graph, waveforms):
    del graph
    return [
        {
            "waveform": np.asarray(w, np.float32)[None],
            "waveform_length": np.array([len(w)], np.int32),
        }
        for w in waveforms
    ]


def _streaming_calibration(graph, waveforms, max_steps=200):
    """Inputs seen by the streaming step when the TF graph runs over `waveforms`."""
    samples = []
    step = tf.function(graph.step, input_signature=graph.input_signature())
    names = ["audio_chunk", "valid_samples", *graph.state_names]
    for wave in waveforms:
        wave = np.asarray(wave, np.float32)
        if len(wave) <= graph.history:
            continue
        state = graph.initial_state(wave[: graph.history])
        rest = wave[graph.history :]
        for start in range(0, len(rest), graph.chunk_samples):
            chunk = np.zeros([1, graph.chunk_samples], np.float32)
            piece = rest[start : start + graph.chunk_samples]
            chunk[0, : len(piece)] = piece
            args = [chunk, np.array([len(piece)], np.int32), *state]
            samples.append(dict(zip(names, [np.asarray(a) for a in args], strict=True)))
            out = step(*args)
            state = [out[f"state_{i}"].numpy() for i in range(len(graph.state_names))]
            if len(samples) >= max_steps:
                return samples
    return samples


def main(argv=None):
    """Child-process entry: convert SAVED_MODEL to OUTPUT with QUANTIZATION."""
    parser = argparse.ArgumentParser()
    parser.add_argument("saved_model")
    parser.add_argument("output")
    parser.add_argument("quantization", choices=QUANTIZATIONS)
    parser.add_argument("representative", nargs="?")
    args = parser.parse_args(argv)
    rep = _load_representative(args.representative) if args.representative else None
    content = convert_saved_model(args.saved_model, args.quantization, rep)
    tmp = args.output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(content)
    os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
