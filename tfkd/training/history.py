"""The learning curve of a run: one JSON line per periodic evaluation in `eval/history.jsonl`.

`train()` appends a record at every periodic evaluation and at the last step (chief only):

    {"step": 2000, "train_seconds": 1834.2, "cpu_seconds": 3310.9, "wall_time": 1764670000.1,
     "loss": 41.2, "rnnt": 41.2, "grad_norm": 3.1, "learning_rate": 0.0009,
     "steps_per_second": 1.09, "dev/wer": 63.5, "dev/loss": 45.0, "train/wer": 52.1}

`train_seconds` and `cpu_seconds` count the training loop (steps, summaries, checkpoints; not
start-up and not evaluation) in wall seconds and in process CPU seconds (user + system, all
threads: comparable when other jobs share the machine). The training terms are those of the
latest summary, the values after them those the `eval_fn` returned.

Resumes. The history describes the weights the run keeps: a run resumed from the checkpoint of
step `c` drops the records after `c` (their weights died with the interrupted invocation, and the
resumed run evaluates those steps again) and continues both counts from the last kept record. Time
an interrupted invocation spent after its last kept record is therefore not counted; with
`eval_every` a multiple of `checkpoint_every` that is at most `eval_every - checkpoint_every` steps.

Robustness. A record is one line written by a single write and flush, newline last, so a process
killed mid-write leaves at most an incomplete last line without its newline. Readers skip it and
the next `train()` removes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence

import tensorflow as tf

HISTORY_FILE = os.path.join("eval", "history.jsonl")
#: Written by `TrainingClock.snapshot`; evaluation values may not use these names.
TIME_KEYS = ("train_seconds", "cpu_seconds", "wall_time")

log = logging.getLogger("tfkd.train")


def history_path(model_dir: str) -> str:
    return os.path.join(model_dir, HISTORY_FILE)


def read_history(model_dir: str) -> list[dict]:
    """Host: the records of `model_dir/eval/history.jsonl`, oldest first; [] without the file.

    An incomplete last line (a writer killed mid-line, or one still writing) is skipped.

    Raises:
        ValueError: a complete line is not a JSON object (names the file and line).
    """
    path = history_path(model_dir)
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    return _parse(text, path)


def resume_history(model_dir: str, step: int) -> list[dict]:
    """Host, chief: keeps the records up to `step` (the resumed checkpoint's) and returns them.

    Records after `step`, and an incomplete last line, are removed by rewriting the file
    atomically (a temporary file renamed over it).
    """
    path = history_path(model_dir)
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    records = _parse(text, path)
    kept = [r for r in records if r["step"] <= step]
    if len(kept) < len(records):
        log.warning(
            "%s: dropping %d record(s) after step %d, where this run starts (their weights were "
            "not checkpointed)",
            path,
            len(records) - len(kept),
            step,
        )
    if len(kept) < len(records) or (text and not text.endswith("\n")):
        tmp = path + ".tmp"
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write("".join(_line(r) for r in kept))
        tf.io.gfile.rename(tmp, path, overwrite=True)
    return kept


def append_record(model_dir: str, record: Mapping[str, float]) -> None:
    """Host, chief: appends one record as one line (a single write, then a flush)."""
    path = history_path(model_dir)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "a") as f:
        f.write(_line(record))
        f.flush()


def make_record(
    step: int,
    times: Mapping[str, float],
    training: Mapping[str, float],
    evaluation: Mapping[str, float],
) -> dict:
    """`{"step", *TIME_KEYS, *training, *evaluation}` with float values.

    Raises:
        ValueError: a name occurs twice (an evaluation value named like a training term).
    """
    record: dict = {"step": int(step)}
    for source in (times, training, evaluation):
        for name, value in source.items():
            if name in record:
                raise ValueError(
                    f"history record at step {step}: {name!r} is reported twice; "
                    "evaluation values need their own names (e.g. 'dev/loss')"
                )
            record[name] = float(value)
    return record


class TrainingClock:
    """Wall and process-CPU seconds of the training loop, without the `paused()` stretches.

    Args:
        train_seconds, cpu_seconds: counts to continue (a resumed run's last record).
    """

    def __init__(self, train_seconds: float = 0.0, cpu_seconds: float = 0.0):
        self._base = (float(train_seconds), float(cpu_seconds))
        self._start = _now()

    @classmethod
    def continuing(cls, records: Sequence[Mapping[str, float]]) -> TrainingClock:
        """A clock that continues the counts of the last record (from zero without records)."""
        last = records[-1] if records else {}
        return cls(last.get("train_seconds", 0.0), last.get("cpu_seconds", 0.0))

    def snapshot(self) -> dict[str, float]:
        """`{"train_seconds", "cpu_seconds", "wall_time"}` now (wall time: Unix seconds)."""
        wall, cpu = _now()
        return {
            "train_seconds": round(self._base[0] + wall - self._start[0], 3),
            "cpu_seconds": round(self._base[1] + cpu - self._start[1], 3),
            "wall_time": round(time.time(), 3),
        }

    @contextlib.contextmanager
    def paused(self) -> Iterator[dict[str, float]]:
        """Stops both counts for the block (evaluation); yields the `snapshot()` at the pause."""
        at_pause = self.snapshot()
        try:
            yield at_pause
        finally:
            self._base = (at_pause["train_seconds"], at_pause["cpu_seconds"])
            self._start = _now()


def _now() -> tuple[float, float]:
    cpu = os.times()  # the whole process: every thread, including tf.data's
    return time.monotonic(), cpu.user + cpu.system


def _line(record: Mapping[str, float]) -> str:
    return json.dumps(record) + "\n"


def _parse(text: str, path: str) -> list[dict]:
    # Only newline-terminated lines are complete: the text after the last newline is skipped.
    lines = text.split("\n")[:-1]
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"{path}:{number}: not a history record (delete or fix the line)")
        records.append(record)
    return records
