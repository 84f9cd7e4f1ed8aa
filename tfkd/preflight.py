"""Checks, before a run builds anything, that the inputs its gin configuration names exist.

A missing corpus, SentencePiece model, teacher checkpoint or pseudo-label set is reported with the
command that makes it, in pipeline order (the first missing step first), instead of a stack trace
from deep inside the run. Reads the gin macros of `gin/data/*.gin` and the distillation configs.
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
import os
import re

import gin
import tensorflow as tf

from tfkd.data import pipeline, reading, records
from tfkd.data import tokenizer as tokenizer_lib
from tfkd.data.tokenizer import Tokenizer

# The name bin/train writes a run's operative config under (tfkd.training.loop.OPERATIVE_CONFIG;
# not imported: the preflight stays free of the training package).
OPERATIVE_CONFIG = "operative_config.gin"

_log = logging.getLogger(__name__)

MAKE_DATA = (
    "python tools/make_corpus.py --size small corpus\n"
    "  python tools/train_spm.py corpus/train-labeled --vocab_size 256 "
    "--output_prefix data/spm/spm\n"
    "  for split in train-labeled train-unlabeled dev test; do python "
    "tools/prepare_librispeech.py corpus/$split data/records --spm_model data/spm/spm.model; done"
)
MAKE_TEACHER = "bin/train --gin_file=gin/teacher.gin --model_dir={teacher_dir}"
MAKE_PSEUDO_LABELS = "bin/pseudo_label --teacher_dir={teacher_dir} --output_dir={output_dir}"


def _macro(name):
    try:
        value = gin.query_parameter(f"%{name}")
    except ValueError:
        return None
    # A macro bound to another macro (`LABELED_RECORDS = %TRAIN_RECORDS`): follow it.
    if isinstance(value, gin.config.ConfigurableReference) and value.selector == "gin.macro":
        return _macro(value.scoped_selector.split("/")[0])
    return value


def missing_inputs(default_teacher_dir: str = "runs/teacher") -> str | None:
    """Host: a message naming the first missing input and its command, or None if all exist.

    Looks at the macros SPM_MODEL, TRAIN_RECORDS (or LABELED_RECORDS), DEV_RECORDS, TEACHER_DIR
    and PSEUDO_LABEL_RECORDS of the parsed gin configuration; unset macros are not checked.
    With `SOFT_TARGETS = True` (gin/soft_kd_offline.gin) the pseudo-label command gets
    `--soft_targets`.
    PSEUDO_LABEL_DEV_RECORDS is optional: without it, training reports dev WER alone
    (`tfkd.training.periodic_wer.WerEvaluator`).
    """
    pseudo = _macro("PSEUDO_LABEL_RECORDS")
    # A distillation run trains on pseudo-labels: the labelled training split is not read, unless
    # gin/data/mixed_labeled.gin mixes LABELED_RECORDS in.
    names = (
        ("SPM_MODEL", "LABELED_RECORDS", "DEV_RECORDS")
        if pseudo
        else ("SPM_MODEL", "TRAIN_RECORDS", "DEV_RECORDS")
    )
    for name in names:
        value = _macro(name)
        if isinstance(value, str) and value and not tf.io.gfile.glob(value):
            hint = "Make the corpus and records with:\n  " + MAKE_DATA
            return f"{name} = {value!r} matches nothing. {hint}"
    teacher_dir = _macro("TEACHER_DIR")
    if isinstance(teacher_dir, str) and not tf.train.latest_checkpoint(teacher_dir):
        return (
            f"no teacher checkpoint in {teacher_dir!r}. Train it with:\n  "
            + MAKE_TEACHER.format(teacher_dir=teacher_dir)
        )
    if isinstance(pseudo, str) and pseudo and not tf.io.gfile.glob(pseudo):
        teacher_dir = teacher_dir or default_teacher_dir
        steps = []
        if not tf.train.latest_checkpoint(teacher_dir):
            steps.append(MAKE_TEACHER.format(teacher_dir=teacher_dir))
        output_dir = pseudo.rsplit("/", 1)[0] if "/" in pseudo else "."
        command = MAKE_PSEUDO_LABELS.format(teacher_dir=teacher_dir, output_dir=output_dir)
        steps.append(command + (" --soft_targets" if _macro("SOFT_TARGETS") is True else ""))
        return f"no pseudo-label records match {pseudo!r}. Make them with:\n  " + "\n  ".join(steps)
    return None


# ---- consistency: do the inputs that exist fit together? -----------------------------------

MAKE_RECORDS = (
    "python tools/prepare_librispeech.py {input_dir} {output_dir} --spm_model {spm_model}"
)
MAKE_SPM = (
    "python tools/train_spm.py corpus/train-labeled --vocab_size 256 --output_prefix {prefix}"
)
_SHARD = re.compile(r"^(?P<split>.+)-\d{5}-of-\d{5}\.tfrecord$")
# Records read at the start of a file to see whether they carry labels (one is enough when the
# preparer wrote a manifest; without one, a few guard against one odd utterance).
_SAMPLE_RECORDS = 16


def inconsistent_inputs() -> str | None:
    """Host: one line naming the first inconsistency between existing inputs, or None.

    Run after `missing_inputs()` (it expects the inputs to exist) and before building anything.
    Checks, in order, each only where the parsed gin configuration names what it needs:

    - `VOCAB_SIZE` against the SentencePiece model `SPM_MODEL` (blank included);
    - the training (or labelled) and dev records: made with token ids (their
      `<split>.manifest.json` names a SentencePiece model, or sampled records hold ids), by the
      run's SentencePiece model (manifest: content hash if stored, else the model's vocabulary,
      else its size), with ids below `VOCAB_SIZE`;
    - pseudo-label records (`PSEUDO_LABEL_RECORDS`, `PSEUDO_LABEL_DEV_RECORDS`): their first
      record has the `nbest/*` fields (and `soft/*` with `SOFT_TARGETS = True`);
    - the teacher (`TEACHER_DIR`): its latest checkpoint reads back whole, and the run's teacher
      builder bindings equal those of the teacher's `operative_config.gin`.

    Each message names the file and the fix.
    """
    for check in (_vocab_size, _labelled_records, _pseudo_label_records, _teacher):
        message = check()
        if message:
            return message
    return None


def _record_macros():
    if _macro("PSEUDO_LABEL_RECORDS"):
        return ("LABELED_RECORDS", "DEV_RECORDS")
    return ("TRAIN_RECORDS", "DEV_RECORDS")


def _patterns(value):
    values = [value] if isinstance(value, str) else list(value or [])
    return [v for v in values if isinstance(v, str) and v]


def _spm():
    """(path, Tokenizer or None, message or None) for the SPM_MODEL macro."""
    path = _macro("SPM_MODEL")
    if not isinstance(path, str) or not path or not tf.io.gfile.exists(path):
        return None, None, None
    try:
        return path, Tokenizer(path), None
    except (RuntimeError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        prefix = path[: -len(".model")] if path.endswith(".model") else path
        return (
            path,
            None,
            f"SPM_MODEL = {path!r} is not a tfkd SentencePiece model ({first}); make it with "
            + MAKE_SPM.format(prefix=prefix),
        )


def _vocab_size():
    path, tokenizer, message = _spm()
    if message:
        return message
    vocab = _macro("VOCAB_SIZE")
    if tokenizer is not None and isinstance(vocab, int) and vocab != tokenizer.vocab_size:
        return (
            f"VOCAB_SIZE = {vocab} but SPM_MODEL = {path!r} has {tokenizer.vocab_size} pieces "
            f"(blank included); set --gin_bindings='VOCAB_SIZE = {tokenizer.vocab_size}' "
            "(the model's output size must equal the SentencePiece model's)"
        )
    return None


def _manifest_of(path):
    """(manifest path, manifest dict) that tools/prepare_librispeech.py wrote for a shard."""
    match = _SHARD.match(os.path.basename(path))
    if not match:
        return None, None
    manifest = os.path.join(os.path.dirname(path), f"{match.group('split')}.manifest.json")
    if not tf.io.gfile.exists(manifest):
        return None, None
    try:
        with tf.io.gfile.GFile(manifest) as f:
            return manifest, json.load(f)
    except (ValueError, OSError):
        return None, None


def _ints(example, key):
    feature = example.features.feature.get(key)
    return list(feature.int64_list.value) if feature is not None else []


def _text(example):
    feature = example.features.feature.get("text")
    return feature.bytes_list.value[0].decode("utf-8", "replace") if feature else ""


def _labelled_records():
    spm_path, tokenizer, _ = _spm()
    vocab = _macro("VOCAB_SIZE")
    vocab = vocab if isinstance(vocab, int) else None
    for name in _record_macros():
        for pattern in _patterns(_macro(name)):
            files = sorted(tf.io.gfile.glob(pattern))
            seen = set()
            for path in files:
                manifest_path, manifest = _manifest_of(path)
                key = manifest_path or os.path.dirname(path)
                if key in seen:
                    continue
                seen.add(key)
                message = _check_records(name, pattern, path, manifest_path, manifest)
                message = message or _check_tokenizer(
                    name, pattern, manifest_path, manifest, spm_path, tokenizer, vocab
                )
                message = message or _check_token_ids(name, path, spm_path, tokenizer, vocab)
                if message:
                    return message
    return None


def _remake(manifest, path, spm_path):
    input_dir = (manifest or {}).get("input_dir") or "<corpus split dir>"
    output_dir = (manifest or {}).get("output_dir") or os.path.dirname(path) or "."
    return MAKE_RECORDS.format(
        input_dir=input_dir, output_dir=output_dir, spm_model=spm_path or "<SPM_MODEL>"
    )


def _check_records(name, pattern, path, manifest_path, manifest):
    """Item: records made without --spm_model hold no token ids; training would fit nothing."""
    fix = "re-make them with " + _remake(manifest, path, _macro("SPM_MODEL"))
    if manifest is not None and "spm_model" in manifest and not manifest["spm_model"]:
        return (
            f"{name} = {pattern!r}: {manifest_path} says these records were made without "
            f"--spm_model, so they hold no token ids (training would fit empty labels); {fix}"
        )
    examples = reading.first_examples(path, _SAMPLE_RECORDS)
    texts = [e for e in examples if _text(e).strip()]
    if texts and not any(_ints(e, "token_ids") for e in texts):
        return (
            f"{name} = {pattern!r}: the first {len(examples)} records of {path} have text but "
            f"no token ids (made without --spm_model?), so training would fit empty labels; {fix}"
        )
    return None


def _check_tokenizer(name, pattern, manifest_path, manifest, spm_path, tokenizer, vocab):
    """Item: records tokenised by another SentencePiece model than the run's SPM_MODEL."""
    if manifest is None or not manifest.get("spm_model"):
        return None
    theirs = manifest["spm_model"]
    size = (manifest.get("vocabulary") or {}).get("vocab_size")
    fix = (
        f"re-make the records with {_remake(manifest, manifest_path, spm_path)}, "
        f"or set SPM_MODEL = {theirs!r}"
    )
    if tokenizer is None:
        if vocab is not None and isinstance(size, int) and size != vocab:
            return (
                f"VOCAB_SIZE = {vocab} but {name} = {pattern!r} were tokenised with a {size}-piece "
                f"SentencePiece model ({theirs}, per {manifest_path}); set "
                f"--gin_bindings='VOCAB_SIZE = {size}'"
            )
        return None
    digest = manifest.get("spm_sha256")
    if digest:
        differs, how = digest != tokenizer_lib.file_sha256(spm_path), "content hash"
    elif tf.io.gfile.exists(theirs):
        same_file = os.path.realpath(theirs) == os.path.realpath(spm_path)
        differs = not same_file and not tokenizer_lib.same_vocabulary(Tokenizer(theirs), tokenizer)
        how = "vocabulary"
        if not differs and isinstance(size, int) and size != tokenizer.vocab_size:
            differs, how = True, "vocabulary size"  # the same path, rewritten since
    elif isinstance(size, int):
        differs, how = size != tokenizer.vocab_size, "vocabulary size"
        if not differs:
            _log.warning(
                "%s names SentencePiece model %s, which no longer exists: cannot check that "
                "%s = %r were tokenised with SPM_MODEL = %r",
                manifest_path,
                theirs,
                name,
                pattern,
                spm_path,
            )
    else:
        return None
    if differs:
        return (
            f"{name} = {pattern!r} were tokenised with {theirs} (per {manifest_path}), whose "
            f"{how} differs from SPM_MODEL = {spm_path!r}; {fix}"
        )
    return None


def _check_token_ids(name, path, spm_path, tokenizer, vocab):
    """Item: token ids at or above VOCAB_SIZE fail as a bare gather error inside the model."""
    limit = vocab if vocab is not None else (tokenizer.vocab_size if tokenizer else None)
    if limit is None:
        return None
    examples = reading.first_examples(path, 64)
    top = max((max(_ints(e, "token_ids"), default=0) for e in examples), default=0)
    if top >= limit:
        what = f"VOCAB_SIZE = {vocab}" if vocab is not None else f"SPM_MODEL = {spm_path!r}"
        return (
            f"{path} holds token id {top}, but {what} allows ids below {limit}: set VOCAB_SIZE "
            "to the size of the SentencePiece model that tokenised these records (blank "
            "included), or re-make them with the run's SPM_MODEL"
        )
    return None


def _pseudo_label_records():
    teacher_dir = _macro("TEACHER_DIR") or "runs/teacher"
    soft = _macro("SOFT_TARGETS") is True
    for name in ("PSEUDO_LABEL_RECORDS", "PSEUDO_LABEL_DEV_RECORDS"):
        pattern = _macro(name)
        files = sorted(tf.io.gfile.glob(pattern)) if isinstance(pattern, str) and pattern else []
        if not files:
            continue
        output_dir = os.path.dirname(pattern) or "."
        command = MAKE_PSEUDO_LABELS.format(teacher_dir=teacher_dir, output_dir=output_dir)
        if name == "PSEUDO_LABEL_DEV_RECORDS":
            command += f" --input_pattern='{_macro('DEV_RECORDS') or '<dev records>'}'"
        command += " --soft_targets" if soft else ""
        missing = pipeline.missing_nbest_fields(files[0])
        if missing:
            return f"{name} = {pattern!r}: " + pipeline.plain_records_message(
                files[0], missing, command
            )
        if soft and name == "PSEUDO_LABEL_RECORDS" and not records.has_soft_targets(files[0]):
            return (
                f"{name} = {pattern!r}: {files[0]} has no soft targets ({records.SOFT_LOG_PROBS}) "
                f"but SOFT_TARGETS = True; make them with {command}"
            )
    return None


# ---- the teacher: a readable checkpoint, trained with the builder bindings this run uses ------


def _teacher():
    trainer = _reference("train.trainer_fn")
    if trainer is None:
        return None
    teacher_fn = _reference(f"{trainer.selector}.teacher_fn")
    teacher_dir = _parameter(f"{trainer.selector}.teacher_dir") or _macro("TEACHER_DIR")
    if not isinstance(teacher_dir, str) or not teacher_dir:
        return None
    path = tf.train.latest_checkpoint(teacher_dir)
    if not path:
        return None  # missing_inputs() names the command
    message = unreadable_checkpoint(path, teacher_dir)
    if message or teacher_fn is None:
        return message
    operative = os.path.join(teacher_dir, OPERATIVE_CONFIG)
    if not tf.io.gfile.exists(operative):
        _log.warning("no %s: cannot check the teacher's builder bindings", operative)
        return None
    with tf.io.gfile.GFile(operative) as f:
        theirs = parse_config_text(f.read())
    return teacher_binding_mismatch(path, operative, teacher_fn, theirs)


def _reference(selector):
    value = _parameter(selector)
    return value if isinstance(value, gin.config.ConfigurableReference) else None


def _parameter(selector):
    try:
        value = gin.query_parameter(selector)
    except ValueError:
        return None
    if isinstance(value, gin.config.ConfigurableReference) and value.selector == "gin.macro":
        return _macro(value.scoped_selector.split("/")[0])
    return value


def unreadable_checkpoint(path: str, model_dir: str) -> str | None:
    """Host: one line if any tensor of checkpoint `path` does not read back (corrupt or
    truncated files, checked by TensorFlow's per-tensor checksums), else None."""
    try:
        reader = tf.train.load_checkpoint(path)
        for key in reader.get_variable_to_dtype_map():
            reader.get_tensor(key)
    except (tf.errors.OpError, IndexError, ValueError, OSError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return (
            f"teacher checkpoint {path} is unreadable ({type(e).__name__}: {first}); restore its "
            f"files ({path}.index, {path}.data-*) from a copy, point "
            "TEACHER_DIR elsewhere, or retrain it with "
            + MAKE_TEACHER.format(teacher_dir=model_dir)
        )
    return None


def parse_config_text(text: str) -> dict[str, str]:
    """`{selector.parameter or MACRO: value text}` of a gin config text (e.g. an operative
    config), macros resolved; long values that gin wraps onto indented lines are joined."""
    settings: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#") or line.startswith("include "):
            key = None if not line.strip() else key
            continue
        if line[0].isspace() and key is not None:
            settings[key] = (settings[key].rstrip("\\").rstrip() + " " + line.strip()).strip()
            continue
        if " = " in line:
            key, value = line.split(" = ", 1)
            settings[key.strip()] = value.strip()
    for key, value in settings.items():
        seen = set()
        while value.startswith("%") and value[1:] in settings and value not in seen:
            seen.add(value)
            value = settings[value[1:]]
        settings[key] = value
    return settings


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def teacher_binding_mismatch(path, operative, teacher_fn, theirs: dict[str, str]) -> str | None:
    """Host: one line if the run's bindings of `teacher_fn` (a gin reference such as
    `@conformer_teacher`) differ from those in the teacher's operative config `theirs`."""
    name = teacher_fn.configurable.name
    model_fn = theirs.get("train.model_fn", "")
    if model_fn and model_fn.lstrip("@").split("/")[-1] != name:
        return (
            f"teacher checkpoint {path} was trained with train.model_fn = {model_fn} "
            f"({operative}), but this run builds its teacher with @{name}; bind the trainer's "
            f"teacher_fn = {model_fn}, or point TEACHER_DIR at a {name} teacher"
        )
    defaults = {
        k: p.default
        for k, p in inspect.signature(teacher_fn.configurable.wrapped).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    ours = {**defaults, **gin.get_bindings(name)}
    prefix = f"{name}."
    trained = {**defaults}
    for key, value in theirs.items():
        if key.startswith(prefix):
            trained[key[len(prefix) :]] = _value(value)
    diffs = [
        (k, trained.get(k), ours.get(k))
        for k in sorted(set(ours) | set(trained))
        if trained.get(k) != ours.get(k)
    ]
    if not diffs:
        return None
    there = ", ".join(f"{name}.{k} = {t!r} there, {o!r} here" for k, t, o in diffs)
    fix = " ".join(f"--gin_bindings='{name}.{k} = {t!r}'" for k, t, _ in diffs)
    return (
        f"teacher checkpoint {path} does not fit this run's teacher: its {operative} differs "
        f"({there}); bind them as the teacher was trained: {fix}"
    )
