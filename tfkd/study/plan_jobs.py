"""A `StudyPlan`'s jobs: the data, teacher, pseudo-label and student runs, as `Job`s.

Each run is one of the project's own CLI commands (`tfkd.study.jobs`), in the directories of the
plan's layout (`tfkd.study.plan`), after the jobs whose outputs it reads. `jobs(plan)` lists them
all, dependencies first; `tfkd.study.scheduler` runs them. Nothing here imports TensorFlow.

Hyper-parameters chosen on dev (`StudyPlan.tuning`): for each tuned method, every value of its
grid is trained on the `tuning_teacher` with the first seed; the value with the lowest dev WER
(among the runs that did not collapse to a few stock transcripts, `stats.collapsed`) is used by
every other run of that method (`tuned_values`). The tuning run of the chosen value is also that
method's first-seed run for the tuning teacher. Test WER is never read for a choice.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Mapping, Sequence

from tfkd.study import jobs as jobs_lib
from tfkd.study import stats
from tfkd.study.carry import WEIGHTS_DIR
from tfkd.study.jobs import (
    Job,
    builtin_data_steps,
    copy_checkpoint,
    evaluate_command,
    read_json,
)
from tfkd.study.plan import BASELINE_ARM, Method, StudyPlan, Teacher, arm_name, setting_name


def jobs(plan: StudyPlan) -> list[Job]:
    """Every job of the study, dependencies before dependants."""
    return data_jobs(plan) + teacher_jobs(plan) + pseudo_label_jobs(plan) + student_jobs(plan)


def grid_settings(grid: Mapping[str, Sequence]) -> list[dict]:
    """The Cartesian product of a `{MACRO: [values]}` grid, in a fixed order."""
    keys = sorted(grid)
    return [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))
    ]


# ---- what every training and evaluation is given ----------------------------------------------


def spm_vocab_size(plan: StudyPlan) -> int:
    """Pieces of the SentencePiece model (blank included), read from its `.vocab` file once
    it exists (a tiny corpus can give fewer than `vocab_size`), else `vocab_size`."""
    path = os.path.splitext(plan.spm_model)[0] + ".vocab"
    if not os.path.exists(path):
        return plan.vocab_size
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def data_flags(plan: StudyPlan) -> list[str]:
    """Data macros of every training (call when the job starts: the data exist then)."""
    flags = [
        f"--gin_bindings=TRAIN_RECORDS = '{plan.records('train-labeled')}'",
        f"--gin_bindings=DEV_RECORDS = '{plan.records('dev')}'",
        f"--gin_bindings=SPM_MODEL = '{plan.spm_model}'",
        f"--gin_bindings=VOCAB_SIZE = {spm_vocab_size(plan)}",
    ]
    if plan.respoken:
        flags.append(f"--gin_bindings=RESPOKEN_RECORDS = '{plan.records('train-respoken')}'")
    return flags


def _evaluate(plan: StudyPlan, model_dir: str) -> list[str]:
    return evaluate_command(
        plan.tool, model_dir, plan.records, plan.spm_model, plan.decode_batch_size
    )


def _eval_outputs(model_dir: str) -> tuple[str, ...]:
    return tuple(os.path.join(model_dir, "eval", f"{s}.json") for s in ("dev", "test"))


# ---- data, teachers, pseudo-labels -------------------------------------------------------------


def data_jobs(plan: StudyPlan) -> list[Job]:
    """The built-in corpus's data jobs (`builtin_data_steps`); none when the data must exist."""
    if plan.corpus_size is None:
        return []
    return jobs_lib.data_jobs(_data_steps(plan))


def _data_steps(plan: StudyPlan) -> list[tuple]:
    return builtin_data_steps(
        plan.tool,
        plan.data_dir,
        plan.corpus_size,
        plan.vocab_size,
        respoken=plan.respoken,
        pool=plan.pool,
    )


def data_deps(plan: StudyPlan) -> tuple[str, ...]:
    """The last data job (each runs after the one before)."""
    if plan.corpus_size is None:
        return ()
    return (f"data-{_data_steps(plan)[-1][0]}",)


def teacher_jobs(plan: StudyPlan) -> list[Job]:
    result = []
    for t in plan.teachers:
        model_dir = plan.teacher_dir(t.name)
        before = None
        deps = data_deps(plan)
        if t.continue_from is not None:
            before = copy_checkpoint(plan.teacher_dir(t.continue_from), model_dir)
            deps += (f"teacher-{t.continue_from}",)
        result.append(
            Job(
                f"teacher-{t.name}",
                functools.partial(_teacher_commands, plan, t, model_dir),
                deps=deps,
                outputs=_eval_outputs(model_dir),
                before=before,
                info={"kind": "teacher", "teacher": t.name, "model_dir": model_dir},
            )
        )
    return result


def _teacher_commands(plan: StudyPlan, teacher: Teacher, model_dir: str) -> list[list[str]]:
    train = plan.tool(
        "bin/train",
        *[f"--gin_file={g}" for g in plan.teacher_gin + plan.extra_gin],
        f"--model_dir={model_dir}",
        *data_flags(plan),
        f"--gin_bindings=NUM_STEPS = {teacher.num_steps}",
        *[f"--gin_bindings={b.replace('{data}', plan.data_dir)}" for b in teacher.bindings],
    )
    # The weights without the optimizer, which the mirror carries to other machines.
    weights = plan.tool("tools/carry_weights.py", model_dir, os.path.join(model_dir, WEIGHTS_DIR))
    return [train, _evaluate(plan, model_dir), weights]


def pseudo_label_jobs(plan: StudyPlan) -> list[Job]:
    result = []
    noise_arms = [(plan.noise_teacher, r) for r in plan.noise_rates]
    wanted = [(t.name, 0.0, False) for t in plan.teachers]
    wanted += [(t, r, False) for t, r in noise_arms]
    for m in plan.methods:
        if m.needs == "soft-targets":
            arms = [(t, 0.0) for t in plan.teachers_of(m)]
            arms += noise_arms if m.name in plan.noise_methods else []
            wanted += [(t, r, True) for t, r in arms if (t, r, True) not in wanted]
    inputs = os.path.join(plan.data_dir, "records", plan.pseudo_label_pattern)
    for teacher, noise, soft in wanted:
        out = plan.pseudo_dir(teacher, noise, soft)
        argv = plan.tool(
            "bin/pseudo_label",
            f"--teacher_dir={plan.teacher_dir(teacher)}",
            f"--input_pattern={inputs}",
            f"--output_dir={out}",
            f"--beam_width={plan.beam_width}",
            f"--nbest={1 if soft else plan.nbest}",
            f"--batch_size={plan.decode_batch_size}",
            f"--spm_model={plan.spm_model}",
        )
        if noise:
            argv += [f"--noise_rate={noise}", "--seed=0"]
        if soft:
            argv += ["--soft_targets"]
        result.append(
            Job(
                f"pseudo-{os.path.basename(out)}",
                [argv],
                deps=(f"teacher-{teacher}", *data_deps(plan)),
                outputs=(os.path.join(out, "manifest.json"),),
                info={
                    "kind": "pseudo",
                    "teacher": teacher,
                    "noise": noise,
                    "soft_targets": soft,
                    "dir": out,
                },
            )
        )
    return result


# ---- students ----------------------------------------------------------------------------------


def _student_argv(
    plan: StudyPlan, method: Method, model_dir: str, seed: int, bindings
) -> list[str]:
    return plan.tool(
        "bin/train",
        *[f"--gin_file={g}" for g in method.gin_files + plan.extra_gin],
        f"--model_dir={model_dir}",
        *data_flags(plan),
        f"--gin_bindings=train.seed = {seed}",
        *[f"--gin_bindings={b}" for b in plan.student_bindings],
        *[f"--gin_bindings={k} = {v!r}" for k, v in sorted(bindings.items())],
    )


def _method_pseudo_dir(plan: StudyPlan, method: Method, teacher: str, noise: float) -> str:
    """The pseudo-label records `method` trains on (N-best, or 1-best with soft targets)."""
    return plan.pseudo_dir(teacher, noise, soft_targets=method.needs == "soft-targets")


def _teacher_bindings(plan: StudyPlan, method: Method, teacher: str, noise: float) -> dict:
    """Where a KD student finds its teacher: pseudo-label records (the N-best; the 1-best of
    soft KD, with the soft targets offline) and, for an online teacher, its checkpoint."""
    if method.needs == "none":
        return {}
    records = _method_pseudo_dir(plan, method, teacher, noise)
    bindings = {
        "PSEUDO_LABEL_RECORDS": os.path.join(records, "*.tfrecord"),
        # The study chooses on dev WER; it has no pseudo-labelled dev split.
        "PSEUDO_LABEL_DEV_RECORDS": plan.path("no-dev-pseudo-labels", "*.tfrecord"),
    }
    if method.needs == "online":
        bindings["TEACHER_DIR"] = plan.teacher_dir(teacher)
    return bindings


def _method_deps(
    plan: StudyPlan, method: Method, teacher: str, noise: float = 0.0
) -> tuple[str, ...]:
    """What a student reads: the data (dev, and the labelled set of the baseline and the mixed
    arm), its teacher's pseudo-labels, and an online teacher. Each job names every job whose
    outputs it reads, not only through another job: a study carried to another machine
    (`tfkd.study.carry`) reruns only what the jobs left to run read."""
    if method.needs == "none":
        return data_deps(plan)
    deps = (f"pseudo-{os.path.basename(_method_pseudo_dir(plan, method, teacher, noise))}",)
    if method.needs == "online":
        deps += (f"teacher-{teacher}",)
    return deps + data_deps(plan)


def student_job_name(arm: str, method: Method, setting: str, seed: int) -> str:
    """`student-<arm>-<method slug>-<setting>-s<seed>`."""
    return f"student-{arm}-{method.slug}-{setting}-s{seed}"


def _student_job(plan, method, arm, teacher, noise, seed, setting, values, deps, info) -> Job:
    """`values`: tuned macros, a dict or a function called at start (after tuning)."""
    model_dir = plan.student_dir(arm, method.slug, setting, seed)
    fixed = _teacher_bindings(plan, method, teacher, noise) if teacher else {}

    def commands():
        vals = values() if callable(values) else values
        argv = _student_argv(plan, method, model_dir, seed, {**vals, **fixed})
        return [argv, _evaluate(plan, model_dir)]

    return Job(
        student_job_name(arm, method, setting, seed),
        commands,
        deps=deps,
        outputs=_eval_outputs(model_dir),
        info={
            "kind": "student",
            "arm": arm,
            "teacher": teacher,
            "noise": noise,
            "method": method.name,
            "seed": seed,
            "setting": setting,
            "model_dir": model_dir,
            **info,
        },
    )


def tuned_values(plan: StudyPlan, method: str) -> dict:
    """The chosen setting of a tuned method: the lowest dev WER among its tuning runs that
    did not collapse (`stats.collapsed`: a few stock transcripts can score a lower WER than a
    model that listens); among all of them when every one collapsed.

    Raises:
        RuntimeError: a tuning run has no dev evaluation yet.
    """
    grid = plan.tuning.get(method)
    if not grid:
        return {}
    candidates = []
    for values in grid_settings(grid):
        dev = read_json(os.path.join(plan.tuning_dir(method, values), "eval", "dev.json"))
        if dev is None:
            raise RuntimeError(f"tuning run {plan.tuning_dir(method, values)} is not evaluated")
        flat = stats.collapsed(dev.get("distinct_hypotheses"), dev.get("utterances"))
        candidates.append((flat, dev["wer"], values))
    listening = [c for c in candidates if not c[0]] or candidates
    return min(listening, key=lambda c: c[1])[2]


def chosen_values(plan: StudyPlan, method: Method) -> dict:
    """The macros of `method`'s runs: the setting chosen for `tuning_from`, then its own."""
    return _on_top_of_source(plan, method, tuned_values(plan, method.name))


def _on_top_of_source(plan: StudyPlan, method: Method, values: Mapping) -> dict:
    inherited = tuned_values(plan, method.tuning_from) if method.tuning_from else {}
    return {**inherited, **values}


def student_jobs(plan: StudyPlan) -> list[Job]:
    """The baseline's runs, then each method's: its tuning runs, then every arm's seeds."""
    result = []
    base = plan.method(plan.baseline_method)
    for seed in plan.cell_seeds(BASELINE_ARM, base.name):
        result.append(
            _student_job(
                plan, base, BASELINE_ARM, None, 0.0, seed, "default", {}, data_deps(plan), {}
            )
        )
    for method in plan.methods:
        if method.name == plan.baseline_method:
            continue
        grid = plan.tuning.get(method.name)
        source_jobs = ()
        if method.tuning_from is not None:
            source = plan.method(method.tuning_from)
            source_jobs = tuple(
                student_job_name(
                    f"teacher-{plan.tuning_teacher}",
                    source,
                    setting_name(values),
                    plan.seeds[0],
                )
                for values in grid_settings(plan.tuning[method.tuning_from])
            )
        tuning_jobs = source_jobs
        if grid:
            t = plan.tuning_teacher
            for values in grid_settings(grid):
                job = _student_job(
                    plan,
                    method,
                    f"teacher-{t}",
                    t,
                    0.0,
                    plan.seeds[0],
                    setting_name(values),
                    functools.partial(_on_top_of_source, plan, method, values),
                    _method_deps(plan, method, t) + source_jobs,
                    {"tuning": values},
                )
                result.append(job)
                tuning_jobs += (job.name,)
        for teacher, noise in plan.arms_of(method):
            arm = arm_name(teacher, noise)
            for seed in plan.cell_seeds(arm, method.name):
                if grid and arm == f"teacher-{plan.tuning_teacher}" and seed == plan.seeds[0]:
                    continue  # the tuning run of the chosen value is this run
                result.append(
                    _student_job(
                        plan,
                        method,
                        arm,
                        teacher,
                        noise,
                        seed,
                        "tuned" if grid or method.tuning_from else "default",
                        functools.partial(chosen_values, plan, method),
                        _method_deps(plan, method, teacher, noise) + tuning_jobs,
                        {},
                    )
                )
    # Seed-major order (stable, so tuning runs stay before the runs that read them): a study
    # stopped early has every cell of the first seed rather than a few cells of every seed.
    # The cells' extra seeds come after every run of `seeds`.
    return sorted(result, key=functools.partial(_seed_order, plan))


def _seed_order(plan: StudyPlan, job: Job) -> tuple[int, int]:
    seed = job.info["seed"]
    return (0, plan.seeds.index(seed)) if seed in plan.seeds else (1, seed)
