"""A package that installs (issue 20, section 4): every subpackage ships, the gin configs ship, the
`tfkd-*` console scripts and `bin/` run the same commands, and every command sets TensorFlow's
environment before TensorFlow loads.

The slow test builds the wheel, installs it into a fresh virtualenv and trains the tiny config for
a few steps with `tfkd-train` from a directory outside the source tree.
"""

import ast
import importlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest
from setuptools import find_packages

from tfkd import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _setup_commands():
    """setup.py's `COMMANDS`: {console script: module of tfkd.commands}."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["COMMANDS"]:
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py defines no COMMANDS")


def _source_modules():
    """Dotted names of every module and package under tfkd/ in the source tree."""
    names = []
    for path in sorted((ROOT / "tfkd").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _source_gin_files():
    return sorted(str(p.relative_to(ROOT / "gin")) for p in (ROOT / "gin").rglob("*.gin"))


def test_find_packages_finds_every_directory_of_modules():
    dirs = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "tfkd").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert "tfkd.study" in dirs
    assert set(find_packages(str(ROOT), include=["tfkd", "tfkd.*"])) == dirs


def test_every_command_has_a_console_script_and_a_bin_script():
    commands = _setup_commands()
    assert set(commands) == {
        "tfkd-train",
        "tfkd-evaluate",
        "tfkd-pseudo-label",
        "tfkd-export",
        "tfkd-convert-tflite",
    }
    for script, module in commands.items():
        assert script == "tfkd-" + module.replace("_", "-")
        command = importlib.import_module(f"tfkd.commands.{module}")
        assert callable(command.main) and callable(command.console_main)
        wrapper = (ROOT / "bin" / module).read_text(encoding="utf-8")
        assert f'cli.run_command({module}.main, "bin/{module}")' in wrapper
        assert os.access(ROOT / "bin" / module, os.X_OK)


def test_set_tf_environment_keeps_the_users_choice():
    environ = {"TF_CPU_ALLOCATOR_USE_BFC": "false"}
    cli.set_tf_environment(environ)
    assert environ == {"TF_CPU_ALLOCATOR_USE_BFC": "false", "TF_CPP_MIN_LOG_LEVEL": "2"}
    environ = {}
    cli.set_tf_environment(environ)
    assert environ == {"TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_run_command_sets_the_environment_before_main(monkeypatch, capsys):
    for name in cli.TF_ENVIRONMENT:
        monkeypatch.setenv(name, "unset")  # so that monkeypatch restores the original
        monkeypatch.delenv(name)
    seen = {}

    def main(argv):
        seen.update({name: os.environ.get(name) for name in cli.TF_ENVIRONMENT})
        raise cli.UsageError(f"argv {argv}")

    assert cli.run_command(main, "tfkd-x", ["--a"]) == cli.EXIT_USAGE
    assert seen == {"TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}
    assert capsys.readouterr().err == "tfkd-x: argv ['--a']\n"


def test_command_modules_load_no_tensorflow_before_main():
    """The environment `run_command` sets is read when TensorFlow loads: not before `main`."""
    modules = ", ".join(f"tfkd.commands.{m}" for m in _setup_commands().values())
    code = f"import sys, {modules}; print(sorted({{'tensorflow', 'gin'}} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


# ---- the wheel, installed into a fresh virtualenv ----------------------------------------------

_PROBE = """
import importlib, json, os, sys
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
import tfkd, tfkd.config
gin_dir = tfkd.config.GIN_DIR
files = sorted(
    os.path.relpath(os.path.join(d, f), gin_dir)
    for d, _, fs in os.walk(gin_dir) for f in fs if f.endswith(".gin")
)
print(json.dumps({"tfkd": tfkd.__file__, "gin_dir": gin_dir, "gin_files": files}))
"""


def _wheel_venv(tmp_path):
    """Builds the wheel from a copy of the source tree and installs it into a new virtualenv.

    Offline: the build uses this environment's setuptools (no build isolation), and the venv
    gets tfkd's dependencies from this environment's site-packages through a `.pth` file, added
    after the install so that pip never sees them. (`--system-site-packages` would expose the
    base interpreter's packages, not this venv's.)

    Returns:
        The venv's bin directory.
    """
    # A copy: building in place would leave build/ and tfkd.egg-info/ in the working tree.
    src = _mkdir(tmp_path / "src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    for name in ("tfkd", "gin"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    pip = [sys.executable, "-m", "pip"]
    wheels = tmp_path / "wheels"
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["-w", str(wheels), str(src)],
        check=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("tfkd-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [*pip, "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=600,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    pathlib.Path(site, "_tfkd_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    return venv / "bin", pathlib.Path(site)


def _mkdir(path):
    path.mkdir(parents=True)
    return path


@pytest.mark.slow
def test_wheel_installs_and_trains_from_outside_the_source_tree(tmp_path):
    from training_records import write_tiny_records

    bin_dir, site = _wheel_venv(tmp_path)
    elsewhere = _mkdir(tmp_path / "elsewhere")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.pop("TFKD_TRACEBACK", None)

    def run(*argv, timeout=300):
        return subprocess.run(
            [str(a) for a in argv],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    # Every module of the source tree imports from the installed package; the configs ship.
    probe = run(bin_dir / "python", "-c", _PROBE, json.dumps(_source_modules()))
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert found["tfkd"] == str(site / "tfkd" / "__init__.py")
    assert found["gin_dir"] == str(site / "tfkd" / "gin")
    assert found["gin_files"] == _source_gin_files()

    # The console scripts: --help, and an expected failure as one line with exit code 2.
    for script in _setup_commands():
        helped = run(bin_dir / script, "--help")
        assert helped.returncode == 0, (script, helped.stderr[-3000:])
        assert helped.stdout.startswith(f"usage: {script} "), helped.stdout
    bad = run(bin_dir / "tfkd-evaluate", "--model_dir=no_run", "--records=bad")
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert bad.stderr.strip().splitlines()[-1] == (
        "tfkd-evaluate: --records=bad: expected --records=SPLIT=PATTERN, e.g. "
        "--records='test=data/records/test-*.tfrecord'"
    )

    # A few steps of the tiny config, named as in the source tree (resolved to the shipped copy).
    pattern = write_tiny_records(str(tmp_path / "records"), num_files=1, per_file=8)
    model_dir = tmp_path / "run"
    trained = run(
        bin_dir / "tfkd-train",
        "--gin_file=gin/test/tiny.gin",
        f"--gin_bindings=TRAIN_RECORDS = '{pattern}'",
        "--gin_bindings=NUM_STEPS = 2",
        f"--model_dir={model_dir}",
        timeout=900,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (model_dir / "ckpt-2.index").exists()
    operative = (model_dir / "operative_config.gin").read_text(encoding="utf-8")
    assert "lstm_student.units = 32" in operative
    assert "Adam.learning_rate = @WarmupDecay()" in operative  # from the included adam_warmup.gin
