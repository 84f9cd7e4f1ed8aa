"""Reading TFRecord files so that every bad record is pinned to its file.

TensorFlow's own errors for bad data name neither the file nor the record:
`TFRecordDataset` raises "corrupted record at <offset>" (bad CRC) or "truncated
record", and `parse_single_example` raises "Could not parse example input". Graph
code cannot catch errors, so each file is read as follows (all in `tf.data`):

1. `TFRecordDataset(file).ignore_errors()`: a framing error ends that file early.
2. A valid sentinel record is appended, and a `scan` numbers the records and sums
   their on-disk bytes (payload + 16 bytes of framing).
3. Records are parsed, and `ignore_errors()` drops those that fail.
4. A second `scan` finds what was lost: a gap in the record numbers is a record
   that failed to parse; at the sentinel, fewer bytes read than the file holds
   means a corrupt or truncated tail.

In strict mode a loss raises `InvalidArgumentError` naming the file, the record
number and the byte offset. With `skip_bad_records` it logs a warning with the
same details through Python logging (logger `tfkd.data.reading`, visible whatever
`TF_CPP_MIN_LOG_LEVEL` says), adds to the process-wide count `skipped_records()`
(the training loop logs it and writes it to TensorBoard) and to a
`BadRecordCounter` when one is given. Only uncompressed files are supported,
since the byte check compares against the file size.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

# Each TFRecord is: uint64 length, uint32 CRC of length, payload, uint32 CRC.
_FRAMING_BYTES = 16

_log = logging.getLogger(__name__)


class _SkipTally:
    """Host: records skipped by every `skip_bad_records` pipeline of this process."""

    def __init__(self):
        self.lock = threading.Lock()
        self.enabled = False
        self.total = 0


_TALLY = _SkipTally()


def skipped_records() -> int | None:
    """Host: bad records (or file tails) skipped so far in this process.

    None when no pipeline of this process reads with `skip_bad_records=True` (nothing to
    count), else the count, 0 included. The training loop logs it and writes it to TensorBoard.
    """
    with _TALLY.lock:
        return _TALLY.total if _TALLY.enabled else None


def reset_skipped_records() -> None:
    """Host: forgets the count of `skipped_records()` (for tests and long-lived processes)."""
    with _TALLY.lock:
        _TALLY.enabled, _TALLY.total = False, 0


class BadRecordCounter:
    """Host-side count of the records skipped by `skip_bad_records=True`.

    Create it outside any `strategy.scope()`, since the input pipeline updates it
    on the host.
    """

    def __init__(self):
        if tf.distribute.has_strategy():
            raise RuntimeError("create BadRecordCounter outside strategy.scope()")
        self.variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="tfkd_bad_records")

    def count(self) -> int:
        """Bad records (or unreadable file tails) skipped so far."""
        return int(self.variable.numpy())


def list_files(file_pattern: str | Sequence[str]) -> list[tuple[str, int]]:
    """Sorted `(path, size_in_bytes)` for one glob pattern or a list of them.

    Raises:
        FileNotFoundError: when nothing matches.
    """
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted({f for p in patterns for f in tf.io.gfile.glob(p)})
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {patterns}")
    return [(f, tf.io.gfile.stat(f).length) for f in files]


def checked_records(
    filename: tf.Tensor,
    file_size: tf.Tensor,
    parse_fn: Callable[[tf.Tensor], dict],
    valid_record: bytes,
    skip_bad_records: bool = False,
    counter: BadRecordCounter | None = None,
) -> tf.data.Dataset:
    """Parsed examples of one file; bad records raise or are skipped (see module doc).

    Args:
        filename: string [] path (usually from a dataset of file names).
        file_size: int64 [] the file's size in bytes.
        parse_fn: serialized string [] → dict of tensors; may raise for bad records.
        valid_record: a serialized record that `parse_fn` accepts (the sentinel).
        skip_bad_records: skip and count instead of raising.
        counter: where skipped records are counted (with `skip_bad_records`).

    Returns:
        A dataset of `parse_fn` outputs in file order.
    """
    if skip_bad_records:
        with _TALLY.lock:
            _TALLY.enabled = True
    file_size = tf.cast(file_size, tf.int64)
    raw = tf.data.TFRecordDataset(filename).ignore_errors(log_warning=True)
    raw = raw.map(lambda r: (r, False))
    raw = raw.concatenate(tf.data.Dataset.from_tensors((tf.constant(valid_record), True)))

    def locate(state, element):
        index, offset = state
        record, is_end = element
        size = tf.cast(tf.strings.length(record), tf.int64) + _FRAMING_BYTES
        offset += tf.where(is_end, tf.constant(0, tf.int64), size)
        next_index = index + tf.where(is_end, tf.constant(0, tf.int64), 1)
        # `index` of the sentinel = records read; `offset` = bytes read so far.
        return (next_index, offset), (index, offset, record, is_end)

    zero = tf.constant(0, tf.int64)
    numbered = raw.scan((zero, zero), locate)
    # Order must be kept: the checks below rely on record numbers arriving in sequence.
    parsed = numbered.map(
        lambda i, off, r, end: (i, off, end, parse_fn(r)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    parsed = parsed.ignore_errors(log_warning=True)

    def check(expected, element):
        index, offset, is_end, example = element
        lost = index - expected
        tail = tf.where(is_end, file_size - offset, zero)
        if skip_bad_records:
            bad = lost + tf.cast(tail > 0, tf.int64)
            if counter is not None:
                counter.variable.assign_add(bad)
            tf.cond(lost > 0, lambda: _report_lost(filename, expected, lost), lambda: zero)
            tf.cond(tail > 0, lambda: _report_tail(filename, offset, file_size), lambda: zero)
        else:
            tf.debugging.Assert(
                lost == 0,
                [
                    "tfkd: record",
                    expected,
                    "of",
                    filename,
                    "is not a valid tfkd Example: a field is missing or malformed (TensorFlow logs",
                    "its parse error with TF_CPP_MIN_LOG_LEVEL=0);",
                    "make_dataset(skip_bad_records=True) skips such records",
                ],
            )
            tf.debugging.Assert(
                tail == 0,
                [
                    "tfkd:",
                    filename,
                    "is corrupt or truncated: unreadable from byte",
                    offset,
                    "of",
                    file_size,
                    "(after",
                    index,
                    "good records); make_dataset(skip_bad_records=True) skips the rest",
                ],
            )
        return index + 1, (is_end, example)

    checked = parsed.scan(zero, check)
    return checked.filter(lambda is_end, _: tf.logical_not(is_end)).map(lambda _, ex: ex)


def _count_skipped(count: int) -> None:
    with _TALLY.lock:
        _TALLY.total += int(count)


def _log_lost(filename, first, count):
    _count_skipped(count)
    _log.warning(
        "skipped %d unparseable record(s) from record %d of %s",
        count,
        first,
        filename.decode("utf-8", "replace"),
    )
    return np.int64(0)


def _log_tail(filename, offset, file_size):
    _count_skipped(1)
    _log.warning(
        "skipped the corrupt or truncated rest of %s from byte %d of %d",
        filename.decode("utf-8", "replace"),
        offset,
        file_size,
    )
    return np.int64(0)


def _report_lost(filename, first, count):
    # A host callback, not tf.print: TF's C++ log is silenced by TF_CPP_MIN_LOG_LEVEL=2.
    return tf.numpy_function(_log_lost, [filename, first, count], tf.int64, stateful=True)


def _report_tail(filename, offset, file_size):
    return tf.numpy_function(_log_tail, [filename, offset, file_size], tf.int64, stateful=True)


def first_examples(path: str, limit: int = 1) -> list[tf.train.Example]:
    """Host: up to `limit` records from the start of a TFRecord file, parsed as Examples.

    Unreadable or unparseable records end the list early (the pipeline reports them).
    """
    examples = []
    try:
        for raw in tf.data.TFRecordDataset(path).take(limit):
            examples.append(tf.train.Example.FromString(raw.numpy()))
    except (tf.errors.OpError, DecodeError):
        pass
    return examples
