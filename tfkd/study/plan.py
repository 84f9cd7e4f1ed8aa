"""The study's plan (METHODS.md §7–§8): teachers of graded quality, student methods, cells, seeds.

`StudyPlan` is the gin root of `tools/run_study.py`, bound by a preset in `PRESET_DIR` (the
paper's folder, `gin/papers/<paper>/` as in DDSP; the per-run overlays that the presets give to
`bin/train` stay in `gin/study/`). It holds the study's `Teacher`s and `Method`s, checks them,
and says where each run lives; `tfkd.study.plan_jobs` expands it into `Job`s (the project's own
CLI commands with the jobs they depend on), `tfkd.study.scheduler` runs them, and
`tfkd.study.report` reads what they wrote. Nothing here imports TensorFlow.

Layout under the study directory OUT (and the scheduler's logs/ and stamps/):

    teachers/<teacher>/                 bin/train model dir, eval/{dev,test}.json
    pseudo/<teacher>[-noise<r>]/        bin/pseudo_label output (manifest.json: teacher WER)
    students/<arm>/<method>/<setting>/s<seed>/   bin/train model dirs, eval/{dev,test}.json

Arms: `teacher-<name>` (the main grid), `noise-<rate>` (the controlled label-noise arm:
the noise teacher's pseudo-labels corrupted at that word-piece error rate and rescored by it),
and `no-kd` (the baseline, trained on ground truth only). A cell is an arm and a method,
`<arm>/<method>` (`cell_key`); every cell trains `seeds`, and those of `extra_seeds` more.
Hyper-parameters of the methods in `tuning` are chosen on dev WER (`tfkd.study.plan_jobs`).
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence

NEEDS = ("pseudo", "soft-targets", "online", "none")
# The arm of the no-KD baseline (teacher-independent).
BASELINE_ARM = "no-kd"
# The study presets (gin files binding `StudyPlan`, with the methods they share), relative to the
# repository root: the paper's wing, apart from the per-run overlays of gin/study/.
PRESET_DIR = "gin/papers/fullsum_kd_icassp2023"


def preset_path(preset: str) -> str:
    """The gin file of a preset: `PRESET_DIR/<preset>.gin`, or `preset` itself if it ends in
    `.gin` (a preset of one's own)."""
    return preset if preset.endswith(".gin") else f"{PRESET_DIR}/{preset}.gin"


@dataclasses.dataclass(frozen=True)
class Method:
    """A student training recipe.

    Attributes:
        name: column name in the tables.
        gin_files: the method's config (e.g. `gin/fullsum_kd.gin`), then the student's size.
        needs: `"pseudo"` (offline N-best records), `"soft-targets"` (offline 1-best records
            with the teacher's collapsed lattice, `bin/pseudo_label --soft_targets`), `"online"`
            (a teacher checkpoint), or `"none"` (ground truth only: the baseline).
        frame_rate_differs: the student's frame rate differs from the teachers'.
        note: shown in the tables, e.g. why a cell is n/a.
        teachers: the teachers whose students use this method (an arm run for fewer teachers,
            e.g. ground truth mixed in); None: every teacher.
        tuning_from: a tuned method whose setting chosen on dev this one uses too (e.g. the
            same loss at another frame rate); its own grid, if any, is tuned on top of it.
    """

    name: str
    gin_files: tuple[str, ...]
    needs: str = "pseudo"
    frame_rate_differs: bool = False
    note: str = ""
    teachers: tuple[str, ...] | None = None
    tuning_from: str | None = None

    @property
    def slug(self) -> str:
        """The name in paths and job names: lower case, runs of other characters as `-`."""
        return slugify(self.name)


def cell_key(arm: str, method: str) -> str:
    """`"teacher-bad/hard"`: a cell's key in `StudyPlan.extra_seeds`."""
    return f"{arm}/{method}"


def arm_name(teacher: str, noise: float) -> str:
    """`teacher-<teacher>`, or `noise-<rate>` for the noise teacher's corrupted labels."""
    return f"teacher-{teacher}" if not noise else f"noise-{noise:g}"


def slugify(text: str) -> str:
    """`"full-sum, other frame rate"` -> `"full-sum-other-frame-rate"`."""
    out = "".join(c if c.isalnum() or c == "." else "-" for c in text.lower())
    return "-".join(p for p in out.replace(".-", "-").strip(".").split("-") if p)


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A teacher of the study.

    Attributes:
        name: e.g. "good"; used in paths and tables.
        num_steps: training steps.
        bindings: extra gin bindings (e.g. less labelled data, a smaller model); `{data}`
            stands for the plan's data directory.
        continue_from: start from a copy of this teacher's checkpoint (same model and data,
            trained further): cheaper than training again from scratch.
        description: what makes it good or bad, for the tables.
    """

    name: str
    num_steps: int
    bindings: tuple[str, ...] = ()
    continue_from: str | None = None
    description: str = ""


def _as_methods(methods) -> tuple[Method, ...]:
    out = []
    for m in methods:
        if not isinstance(m, Method):
            m = dict(m)
            if m.get("teachers") is not None:
                m["teachers"] = tuple(m["teachers"])
            m = Method(**m)
        out.append(m)
    return tuple(out)


def _as_teachers(teachers) -> tuple[Teacher, ...]:
    out = []
    for t in teachers:
        if not isinstance(t, Teacher):
            t = dict(t)
            t["bindings"] = tuple(t.get("bindings", ()))
            t = Teacher(**t)
        out.append(t)
    return tuple(out)


def _as_seeds(label: str, seeds) -> tuple[tuple[int, ...] | None, str | None]:
    """`seeds` as a tuple of ints, or None and a problem (starting with `label`) when it is not a
    collection of seeds (a lone seed: gin reads `(3)` as 3) or holds one that is not an integer
    >= 0 (`'a'`, or 2.5, which `int()` would round)."""
    if isinstance(seeds, str) or not isinstance(seeds, Iterable):
        return None, (
            f"{label}: give a tuple of seeds, e.g. (3, 4), or (3,) for one seed; got {seeds!r}"
        )
    seeds = tuple(seeds)
    bad = [
        s for s in seeds if isinstance(s, bool) or not isinstance(s, numbers.Integral) or int(s) < 0
    ]
    if bad:
        got = ", ".join(map(repr, bad))
        return None, f"{label}: seeds must be integers >= 0, e.g. (3, 4); got {got}"
    return tuple(int(s) for s in seeds), None


def _as_extra_seeds(extra) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """`StudyPlan.extra_seeds` with tuples of int seeds, and a problem for each value that
    `_as_seeds` refuses, whose key is left out."""
    out, problems = {}, []
    for key, seeds in dict(extra).items():
        seeds, problem = _as_seeds(f"extra_seeds {str(key)!r}", seeds)
        if problem:
            problems.append(problem)
        else:
            out[str(key)] = seeds
    return out, problems


def setting_name(values: Mapping[str, object]) -> str:
    """Directory-safe name of a hyper-parameter setting, e.g. `SHIFT=1,TAU=2.0`; `default`."""
    if not values:
        return "default"
    return ",".join(f"{k}={v}" for k, v in sorted(values.items()))


@dataclasses.dataclass
class StudyPlan:
    """Everything one preset of the study runs (see the module docstring).

    Args:
        name: the preset's name (results are labelled with it).
        out_dir: the study directory OUT (runs, logs, stamps).
        data_dir: corpus, SentencePiece model and records (shared with `make demo`).
        corpus_size: `tools/make_corpus.py --size` when the study builds the data itself;
            None: the data must exist (e.g. LibriSpeech, prepared beforehand).
        respoken: renditions of `train-labeled` by new speakers in the built-in corpus
            (`tools/make_corpus.py --respoken`, split `train-respoken`; its records are
            RESPOKEN_RECORDS in every training); 0: none.
        pool: utterances of the built-in corpus's unlabelled `train-pool` split
            (`tools/make_corpus.py --pool`: sentences no other split uses); 0: none.
        vocab_size: SentencePiece pieces (blank included).
        teacher_gin: gin files of every teacher, before its own bindings.
        teachers: `Teacher`s (or dicts of their fields), best first is not required.
        methods: `Method`s (or dicts); one must be named `baseline_method`.
        baseline_method: the no-KD reference (trained once per seed, teacher-independent).
        not_applicable: `{column: why}`: columns shown as n/a in every row (e.g. soft KD with
            a student at another frame rate, which `SoftDistillationTrainer` refuses).
        seeds: training seeds of every student configuration.
        extra_seeds: `{"<arm>/<method>": (seed, ...)}`: more seeds for the cells that need them
            (the report's Precision section names them), e.g. `{'teacher-bad/hard': (3, 4)}`;
            the baseline's key is `no-kd/<baseline_method>`. Their runs come after every run
            of `seeds`.
        student_bindings: gin bindings of every student run (e.g. steps).
        tuning: `{method: {MACRO: [values]}}` grids chosen on dev WER (`tfkd.study.plan_jobs`).
        tuning_teacher: the teacher whose students are tuned.
        noise_teacher: the teacher of the controlled label-noise arm.
        noise_rates: word-piece error rates of that arm.
        noise_methods: methods trained in that arm.
        pseudo_label_pattern: the split pseudo-labelled by each teacher (records glob).
        beam_width, nbest: pseudo-labelling beam and N-best size.
        decode_batch_size: batch of `bin/evaluate` and `bin/pseudo_label`.
        extra_gin: gin files added to every training (tests: tiny sizes).
        python: the interpreter that runs the CLIs.
        repo: the repository root (commands run from there).
    """

    name: str = "study"
    out_dir: str = "runs/study"
    data_dir: str = "data"
    corpus_size: str | None = "small"
    respoken: int = 0
    pool: int = 0
    vocab_size: int = 256
    teacher_gin: tuple[str, ...] = ("gin/teacher.gin",)
    teachers: Sequence = ()
    methods: Sequence = ()
    baseline_method: str = "no-kd"
    not_applicable: Mapping[str, str] = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    extra_seeds: Mapping[str, Sequence[int]] = dataclasses.field(default_factory=dict)
    student_bindings: tuple[str, ...] = ()
    tuning: Mapping[str, Mapping[str, Sequence]] = dataclasses.field(default_factory=dict)
    tuning_teacher: str | None = None
    noise_teacher: str | None = None
    noise_rates: tuple[float, ...] = ()
    noise_methods: tuple[str, ...] = ("hard", "full-sum")
    pseudo_label_pattern: str = "train-unlabeled-*.tfrecord"
    beam_width: int = 4
    nbest: int = 4
    decode_batch_size: int = 64
    extra_gin: tuple[str, ...] = ()
    python: str = "python"
    repo: str = "."

    def __post_init__(self):
        self.teachers = _as_teachers(self.teachers)
        self.methods = _as_methods(self.methods)
        seeds, seeds_problem = _as_seeds("seeds", self.seeds)
        self.seeds = seeds if seeds is not None else ()
        self.extra_seeds, not_seeds = _as_extra_seeds(self.extra_seeds)
        names = [t.name for t in self.teachers]
        methods = {m.name: m for m in self.methods}
        problems = []
        if not self.teachers:
            problems.append("no teachers")
        if len(set(names)) != len(names):
            problems.append(f"teacher names repeat: {names}")
        for t in self.teachers:
            if t.continue_from is not None and t.continue_from not in names:
                problems.append(f"teacher {t.name} continues unknown teacher {t.continue_from}")
        if self.baseline_method not in methods:
            problems.append(f"baseline method {self.baseline_method!r} is not among the methods")
        elif methods[self.baseline_method].needs != "none":
            problems.append(f"baseline method {self.baseline_method!r} must need no teacher")
        for m in self.methods:
            unknown = sorted(set(m.teachers or ()) - set(names))
            if unknown:
                problems.append(f"method {m.name}: unknown teachers {unknown} (teachers: {names})")
            if m.needs not in NEEDS:
                problems.append(f"method {m.name}: needs must be one of {', '.join(NEEDS)}")
        if seeds_problem:
            problems.append(seeds_problem)
        elif not self.seeds:
            problems.append("no seeds")
        elif len(set(self.seeds)) != len(self.seeds):
            problems.append(f"seeds repeat: {self.seeds}")
        for key in list(self.tuning) + list(self.noise_methods):
            if key not in methods:
                problems.append(f"unknown method {key!r} (methods: {sorted(methods)})")
        for m in self.methods:
            source = methods.get(m.tuning_from)
            if m.tuning_from is not None and (
                m.tuning_from not in self.tuning or source is None or source.tuning_from
            ):
                problems.append(
                    f"method {m.name}: tuning_from {m.tuning_from!r} must name a tuned method "
                    "that takes no setting from another"
                )
        for key in self.tuning:
            teachers = methods[key].teachers if key in methods else None
            if teachers is not None and self.tuning_teacher not in teachers:
                problems.append(f"method {key} is tuned on {self.tuning_teacher}, not its teacher")
        if self.tuning and self.tuning_teacher not in names:
            problems.append(f"tuning_teacher {self.tuning_teacher!r} is not a teacher")
        if self.noise_rates and self.noise_teacher not in names:
            problems.append(f"noise_teacher {self.noise_teacher!r} is not a teacher")
        if not 1 <= self.nbest <= self.beam_width:
            problems.append(f"need 1 <= nbest <= beam_width, got {self.nbest}, {self.beam_width}")
        if (self.respoken or self.pool) and self.corpus_size is None:
            problems.append("respoken and pool need the built-in corpus (corpus_size)")
        if self.respoken < 0 or self.pool < 0:
            problems.append(f"respoken and pool must be >= 0, got {self.respoken}, {self.pool}")
        problems += not_seeds + self._extra_seeds_problems()
        if problems:
            raise ValueError("invalid study plan: " + "; ".join(problems))

    def _extra_seeds_problems(self) -> list[str]:
        """Keys of `extra_seeds` that name no cell, and seeds that `seeds` has or that repeat."""
        cells = self.cell_keys()
        problems = []
        for key, seeds in self.extra_seeds.items():
            if key not in cells:
                problems.append(f"extra_seeds {key!r}: no such cell (cells: {cells})")
            taken = sorted(set(seeds) & set(self.seeds))
            if taken:
                problems.append(
                    f"extra_seeds {key!r}: seeds {taken} are in seeds {self.seeds} already; "
                    "extra seeds must be others"
                )
            if len(set(seeds)) != len(seeds):
                problems.append(f"extra_seeds {key!r}: seeds repeat: {seeds}")
        return problems

    # ---- cells ---------------------------------------------------------------------------------

    def arms_of(self, method: Method) -> list[tuple[str, float]]:
        """`(teacher, noise rate)` of every arm whose students use the KD method `method`
        (rate 0: the teacher's own pseudo-labels)."""
        arms = [(t, 0.0) for t in self.teachers_of(method)]
        if method.name in self.noise_methods:
            arms += [(self.noise_teacher, r) for r in self.noise_rates]
        return arms

    def cell_keys(self) -> list[str]:
        """`<arm>/<method>` of every student cell, the baseline's first."""
        keys = [cell_key(BASELINE_ARM, self.baseline_method)]
        for m in self.methods:
            if m.name != self.baseline_method:
                keys += [cell_key(arm_name(t, r), m.name) for t, r in self.arms_of(m)]
        return keys

    def cell_seeds(self, arm: str, method: str) -> tuple[int, ...]:
        """The seeds a cell trains: `seeds`, then its `extra_seeds`."""
        return self.seeds + self.extra_seeds.get(cell_key(arm, method), ())

    # ---- paths ---------------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return os.path.join(self.out_dir, *parts)

    def records(self, split: str) -> str:
        return os.path.join(self.data_dir, "records", f"{split}-*.tfrecord")

    @property
    def spm_model(self) -> str:
        return os.path.join(self.data_dir, "spm", "spm.model")

    def teacher_dir(self, teacher: str) -> str:
        return self.path("teachers", teacher)

    def pseudo_dir(self, teacher: str, noise: float = 0.0, soft_targets: bool = False) -> str:
        """OUT/pseudo/<teacher>[-noise<rate>][-soft]: N-best records, or with `soft_targets` the
        1-best records with the teacher's collapsed lattice."""
        name = teacher if not noise else f"{teacher}-noise{noise:g}"
        return self.path("pseudo", name + ("-soft" if soft_targets else ""))

    def student_dir(self, arm: str, method: str, setting: str, seed: int) -> str:
        return self.path("students", arm, method, setting, f"s{seed}")

    def tuning_dir(self, method: str, values: Mapping) -> str:
        """The run of a tuned `method` with setting `values`: the tuning teacher's, first seed."""
        return self.student_dir(
            f"teacher-{self.tuning_teacher}", slugify(method), setting_name(values), self.seeds[0]
        )

    def teachers_of(self, method: Method) -> list[str]:
        """The names of the teachers whose students use `method`."""
        return [
            t.name for t in self.teachers if method.teachers is None or t.name in method.teachers
        ]

    def method(self, name: str) -> Method:
        return next(m for m in self.methods if m.name == name)

    def tool(self, script: str, *args: str) -> list[str]:
        return [self.python, os.path.join(self.repo, script), *args]
