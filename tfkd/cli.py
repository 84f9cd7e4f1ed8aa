"""What every `bin/` and `tools/` entry point shares: an expected failure is one message on stderr
and exit code 2.

Expected failures are those a user fixes by changing the command, the configuration or the input:
- `UsageError`, raised by `bin/` and `tools/` scripts for their own checks, and
  `SystemExit(message)` (an older idiom of some tools; a numeric exit code passes through);
- a file that is missing, exists already or may not be read or written, wherever raised
  (`FileNotFoundError`, `FileExistsError`, `PermissionError`, `IsADirectoryError`,
  `NotADirectoryError`, TensorFlow's `NotFoundError` and `PermissionDeniedError`): the message
  names the path;
- `ValueError` (argument checks, gin's errors, `tfkd.config.GinConfigError`) and other `OSError`s
  when raised by tfkd's or gin's own code, and `KeyError` raised by gin: checks that name the bad
  value.

Anything else, or a `ValueError` raised inside TensorFlow or Keras, is a bug (or a check tfkd is
missing) and keeps its traceback. `TFKD_TRACEBACK=1` shows the traceback of expected failures too.
This module imports neither TensorFlow nor gin, so that `--help` and bad flags stay fast.

tfkd's commands (`tfkd.commands`: the `tfkd-*` console scripts and the `bin/` scripts of a clone)
start through `run_command`, which also sets TensorFlow's environment (`TF_ENVIRONMENT`) before
TensorFlow loads.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable, MutableMapping, Sequence

EXIT_USAGE = 2  # argparse's code for a bad command line

_FILE_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)
_TF_FILE_ERRORS = ("NotFoundError", "PermissionDeniedError")  # tf.errors, named: no TF import
_CHECKED = (ValueError, OSError)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_BIN_DIR = os.path.join(os.path.dirname(_PACKAGE_DIR), "bin")
_GIN_CONTEXT = re.compile(r"^\s+In call to configurable ")

# What tfkd's commands run TensorFlow with unless the user's environment says otherwise.
TF_ENVIRONMENT = {
    # No C++ INFO and WARNING lines: errors only.
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # The BFC allocator keeps freed buffers instead of returning them to the OS; with the default
    # one every fresh large buffer is page-faulted in again on the next step (an elementwise op on
    # 375 MB: 880 ms against 125 ms; README, "CPU allocator").
    "TF_CPU_ALLOCATOR_USE_BFC": "true",
}


class UsageError(Exception):
    """A failure the user fixes: a bad flag, configuration or input. The message says how."""


def check_at_least(flag: str, value, minimum) -> None:
    """Raises `UsageError` naming `flag` unless `value` is None or >= `minimum`.

    For command-line numbers that argparse has typed but not bounded (`flag`: e.g. "--jobs").
    """
    if value is not None and not value >= minimum:  # also NaN
        raise UsageError(f"{flag} must be >= {minimum}, got {value}")


def is_expected(error: BaseException) -> bool:
    """Whether `error` is an expected failure (see the module docstring), not a bug."""
    if isinstance(error, (UsageError, *_FILE_ERRORS)):
        return True
    if any(
        c.__name__ in _TF_FILE_ERRORS and c.__module__.startswith("tensorflow")
        for c in type(error).__mro__
    ):
        return True
    frames = traceback.extract_tb(error.__traceback__)
    where = os.path.abspath(frames[-1].filename) if frames else None
    from_gin = where is not None and f"{os.sep}gin{os.sep}" in where
    if isinstance(error, KeyError):
        return from_gin  # gin's unknown-name errors; a KeyError in tfkd is a bug
    if not isinstance(error, _CHECKED):
        return False
    return where is None or _is_ours(where) or from_gin


def _is_ours(path: str) -> bool:
    return path.startswith(_PACKAGE_DIR + os.sep) or os.path.dirname(path) == _BIN_DIR


def message(error: BaseException) -> str:
    """The error's message without the lines gin appends ("In call to configurable 'train' ...")."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    lines = [line for line in text.splitlines() if not _GIN_CONTEXT.match(line)]
    return "\n".join(lines).strip()


def set_tf_environment(environ: MutableMapping[str, str] | None = None) -> None:
    """Sets each `TF_ENVIRONMENT` variable that `environ` (default `os.environ`) does not set.

    TensorFlow reads these when it loads: call this before the first `import tensorflow`.
    """
    environ = os.environ if environ is None else environ
    for name, value in TF_ENVIRONMENT.items():
        environ.setdefault(name, value)


def run_command(main: Callable[[Sequence[str] | None], int], prog: str, argv=None) -> int:
    """How every tfkd command starts: `set_tf_environment()`, then `run(main, prog, argv)`.

    `main` must import TensorFlow only when called (the environment is read when TF loads).
    """
    set_tf_environment()
    return run(main, prog, argv)


def run(main: Callable[[Sequence[str] | None], int], prog: str, argv=None) -> int:
    """Calls `main(argv)`; an expected failure becomes `PROG: message` on stderr and exit code 2.

    Returns:
        `main`'s return value, or `EXIT_USAGE`.
    """
    try:
        return main(argv)
    except SystemExit as e:
        if not isinstance(e.code, str):  # sys.exit(n), argparse's errors: already handled
            raise
        print(f"{prog}: {e.code}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # sorted into expected failures and bugs below
        if not is_expected(e) or os.environ.get("TFKD_TRACEBACK"):
            raise
        print(f"{prog}: {message(e)}", file=sys.stderr)
        return EXIT_USAGE
