"""Strict gin (issue 21 item 5): a macro or scope that nothing reads is an error naming it."""

import os
import subprocess
import sys

import gin
import pytest

from tfkd import config

TINY = "gin/test/tiny.gin"


def test_unreferenced_macro_is_an_error_naming_it(clean_gin):
    with pytest.raises(
        config.GinConfigError,
        match=r"macro NUM_STEPZ is bound but nothing references %NUM_STEPZ \(a misspelt macro\?\)",
    ):
        config.parse_gin([TINY], ["NUM_STEPZ = 3"])


def test_unknown_scope_is_an_error_naming_it(clean_gin):
    with pytest.raises(
        config.GinConfigError,
        match=r"scope 'train_dta' of train_dta/make_dataset.max_duration_s is never entered",
    ):
        config.parse_gin([TINY], ["train_dta/make_dataset.max_duration_s = 3.0"])


def test_a_nested_unknown_scope_names_the_misspelt_component(clean_gin):
    with pytest.raises(config.GinConfigError, match=r"scope 'dev_dta' of train_data/dev_dta/"):
        config.parse_gin(["gin/teacher.gin"], ["train_data/dev_dta/make_dataset.shuffle = False"])


def test_a_known_scope_this_run_never_enters_is_an_error_for_the_run(clean_gin):
    # gin/test/tiny.gin calls plain @make_dataset: a train_data/ binding would be ignored.
    config.parse_gin([TINY], ["train_data/make_dataset.max_duration_s = 3.0"])  # an overlay
    with pytest.raises(
        config.GinConfigError,
        match=r"train_data/make_dataset.max_duration_s is never read: this configuration enters "
        r"no scope 'train_data'",
    ):
        config.check_run_scopes()


def test_a_command_line_macro_this_run_never_reads_is_an_error_for_the_run(clean_gin):
    # NBEST is read by the pseudo-label configs, not by a supervised run like gin/test/tiny.gin.
    bindings = ["NBEST = 2", "NUM_STEPS = 3", "train.seed = 1", "RESPOKEN_RECORDS = 'r/*'"]
    config.parse_gin([TINY], bindings)  # known to the shipped files: an overlay may bind it
    with pytest.raises(
        config.GinConfigError,
        match=r"^--gin_bindings binds macro NBEST, but this configuration never reads %NBEST$",
    ):
        config.check_run_macros(bindings)
    config.check_run_macros(bindings[1:])  # read by tiny.gin, not a macro, a data macro


def test_macros_and_scopes_that_something_reads_pass(clean_gin):
    bindings = [
        "TRAIN_RECORDS = 'r/train-*.tfrecord'",
        "NUM_STEPS = 3",  # referenced by tiny.gin
        "TEST_RECORDS = 'r/test-*.tfrecord'",  # read by bin/evaluate (`<SPLIT>_RECORDS`)
        "RESPOKEN_RECORDS = 'r/respoken-*.tfrecord'",  # referenced by shipped overlays
        "SPM_MODEL = 'spm.model'",  # read by preflight and trained_model
    ]
    config.parse_gin([TINY], bindings)
    config.check_run_scopes()
    assert gin.query_parameter("%NUM_STEPS") == 3
    gin.clear_config()
    config.parse_gin(["gin/teacher.gin"], ["train_data/make_dataset.shuffle = False"])
    config.check_run_scopes()  # the teacher's files reference @train_data/make_dataset


def test_bin_train_exits_2_naming_the_macro_before_any_work(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(config.REPO_DIR, "bin", "train"),
            f"--gin_file={TINY}",
            "--gin_bindings=NUM_STEPZ = 3",
            f"--model_dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        cwd=config.REPO_DIR,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "bin/train: gin configuration error: macro NUM_STEPZ is bound but nothing references "
        "%NUM_STEPZ (a misspelt macro?)"
    )
    assert not run_dir.exists()


def test_parsing_from_another_directory_logs_no_search_path_errors(clean_gin, tmp_path, caplog):
    # gin/... names resolve against tfkd's tree when the current directory has no gin/; gin's
    # "Path not found" lines for the first miss must not reach the user's log as errors.
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with caplog.at_level("INFO"):
            config.parse_gin(["gin/teacher.gin"], [])
    finally:
        os.chdir(cwd)
    assert gin.query_parameter("%NUM_STEPS") == 20000
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
