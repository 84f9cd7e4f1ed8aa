"""Runs jobs: dependencies first, several at once, resumable, one log per job. The study's runner
(`tools/run_study.py`) and `make demo`'s (`tools/run_demo.py`, through `tfkd.study.demo`).

A job counts as done when all its outputs exist and, unless it is unstamped (data preparation,
whose tools mark their own completion), its stamp `OUT/stamps/<job>.json`, written after its
commands succeeded with the job's wall time (earlier failed or interrupted attempts included).
A done job whose `Job.check` says its outputs do not fit this run (data made with other sizes)
is not skipped: it fails with that message, no command runs, and the jobs that need it are
blocked, even those done already.
A rerun skips done jobs and restarts the others (training resumes from its checkpoints,
pseudo-labelling keeps its finished shards). A failed job does not stop the others; the jobs that
depend on it are reported as blocked (`tfkd.study.jobs.in_sequence`: every later job).

Parallel jobs share the machine's cores: each runs with `TF_NUM_INTRAOP_THREADS` (and inter-op)
set to `cores // parallel`, which on a small CPU gives more throughput than one job using every
core, because small models leave threads idle between ops.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import tqdm

from tfkd import cli
from tfkd.study.jobs import Job, stamp_path


def _dump(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _load(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class WallClock:
    """The driver's wall time over every invocation, in `OUT/wall_time.json`, kept while it runs.

    The file holds `{"seconds": S}`, the finished invocations' total, and while one runs also
    `"running": {"started": t0, "seen": t}`, rewritten at most every `every` seconds by `tick`.
    An invocation killed without clean-up (SIGKILL, power loss) leaves `running`; the next `start`
    adds its `seen - started`, so at most `every` seconds of it are lost.
    """

    def __init__(self, path: str, every: float = 30.0):
        self.path, self.every = path, float(every)
        self.before = self.started = self.written = None  # `before`: earlier invocations

    def seconds(self) -> float:
        """Total so far, the current invocation included."""
        if self.started is not None:
            return self.before + time.time() - self.started
        data = _load(self.path) or {}
        running = data.get("running")
        return float(data.get("seconds", 0.0)) + (
            running["seen"] - running["started"] if running else 0.0
        )

    def start(self) -> None:
        self.before = self.seconds()  # a killed invocation's time counts
        self.started = time.time()
        self._write(self.before, seen=self.started)

    def tick(self) -> None:
        now = time.time()
        if self.started is not None and now - self.written >= self.every:
            self._write(self.before, seen=now)

    def stop(self) -> None:
        if self.started is not None:
            total = self.seconds()
            self.started = None
            self._write(total)

    def _write(self, total: float, seen: float | None = None) -> None:
        data = {"seconds": round(total, 1)}
        if seen is not None:
            data["running"] = {"started": self.started, "seen": seen}
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        _dump(self.path, data)
        self.written = time.time()


@dataclasses.dataclass
class Failure:
    """Why a job failed (`Scheduler.failures`).

    Attributes:
        reason: as written at the end of the job's log, e.g. "exit code 3".
        argv: the command that failed, if one did.
        error: what the job's `before` or `commands` raised, if they did.
        misfit: the job did not run: its outputs exist but do not fit this run (`Job.check`);
            `reason` says what to delete.
    """

    reason: str
    argv: list[str] | None = None
    error: Exception | None = None
    misfit: bool = False


class Scheduler:
    """Runs `Job`s of one study directory.

    Args:
        out_dir: the study directory (logs/ and stamps/ go there).
        repo: working directory of every command.
        parallel: jobs running at once.
        cores: CPU cores to share between them (default: all the machine has).
        env: base environment of the commands (default: this process's).
        progress: show a progress bar over jobs.
        echo: pass the commands' output through to stdout as it comes (progress bars included)
            besides keeping it in the logs, and announce every job and command there, as
            `[<tag>:<job>] ...` lines (`make demo`). Failed and blocked jobs are left to the
            caller to report (`failures`).
        tag: the driver's name at the head of the scheduler's lines, in its output and the logs.

    Attributes:
        failures: `{job: Failure}` of the last `run`.
    """

    def __init__(
        self,
        out_dir,
        repo=".",
        parallel=1,
        cores=None,
        env=None,
        progress=True,
        echo=False,
        tag="study",
    ):
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        self.out_dir, self.repo, self.parallel = out_dir, repo, int(parallel)
        self.cores = int(cores or os.cpu_count() or 1)
        self.env = dict(os.environ if env is None else env)
        self.progress, self.echo, self.tag = progress, echo, tag
        self.failures: dict[str, Failure] = {}
        os.makedirs(self.path("logs"), exist_ok=True)
        os.makedirs(self.path("stamps"), exist_ok=True)

    def path(self, *parts: str) -> str:
        return os.path.join(self.out_dir, *parts)

    def stamp_path(self, job: Job) -> str:
        return stamp_path(self.out_dir, job.name)

    def log_path(self, job: Job) -> str:
        return self.path("logs", f"{job.name}.log")

    def done(self, job: Job) -> bool:
        if job.always:
            return False
        stamp_ok = not job.stamped or os.path.exists(self.stamp_path(job))
        return stamp_ok and all(os.path.exists(p) for p in job.outputs)

    def misfit(self, job: Job) -> Failure | None:
        """Why `job`'s outputs do not fit this run (`Job.check`), as a failure; None if they do."""
        if job.check is None:
            return None
        try:
            reason = job.check()
        except Exception as e:  # a bad plan value must fail this job, not the study
            return Failure(f"could not check its outputs: {e!r}", error=e)
        return None if reason is None else Failure(reason, misfit=True)

    def _log(self, job: Job, text: str) -> None:
        with open(self.log_path(job), "a", encoding="utf-8") as f:
            f.write(f"\n[{self.tag}] {text}\n")

    def job_env(self) -> dict[str, str]:
        """The commands' environment: the thread budget, and `cli.TF_ENVIRONMENT` (the BFC
        allocator, errors-only C++ logs) where the base environment does not say otherwise."""
        env = dict(self.env)
        threads = str(max(1, self.cores // self.parallel))
        env.setdefault("TF_NUM_INTRAOP_THREADS", threads)
        env.setdefault("TF_NUM_INTEROP_THREADS", threads)
        cli.set_tf_environment(env)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def say(self, job: Job | str, text: str) -> None:
        """`[<tag>:<job>] text` on stdout, with `echo` (the commands' output is there too)."""
        if self.echo:
            name = job if isinstance(job, str) else job.name
            print(f"[{self.tag}:{name}] {text}", flush=True)

    def run(
        self, jobs: Sequence[Job], tick=None, only: str | None = None, on_done=None, unneeded=()
    ) -> dict[str, str]:
        """Runs every job not done yet; returns `{job: "done"|"skipped"|"failed"|"blocked"|
        "unneeded"}` (a done job whose outputs do not fit this run, `Job.check`, is "failed"
        without running). `unneeded`: names of jobs not done that are not run either, because
        nothing left to run needs them (`tfkd.study.carry.unneeded`); no job still to run may
        depend on one.
        `tick()`, if given, is called about twice a second while jobs run (e.g. `WallClock`).
        `only`: run just that job, done or not, taking the jobs it depends on as done (`make demo
        --only STAGE`). `on_done(job)`, if given, is called when a job of this run has finished
        and been stamped (the study copies its results to the committed mirror); what it raises
        is reported and does not stop the run."""
        names = [j.name for j in jobs]
        if len(set(names)) != len(names):
            raise ValueError("job names repeat")
        by_name = {j.name: j for j in jobs}
        for j in jobs:
            unknown = [d for d in j.deps if d not in by_name]
            if unknown:
                raise ValueError(f"job {j.name} depends on unknown jobs {unknown}")
        if only is not None:
            if only not in by_name:
                raise ValueError(f"unknown job {only!r}")
            jobs = [dataclasses.replace(by_name[only], deps=(), always=True)]
        self.failures = {}
        status = {}
        for j in jobs:
            if j.name in unneeded and not self.done(j):
                status[j.name] = "unneeded"
            elif self.done(j):
                failure = self.misfit(j)
                status[j.name] = "skipped" if failure is None else "failed"
                if failure is not None:
                    self.failures[j.name] = failure
                    self._log(j, f"its outputs exist but do not fit this run: {failure.reason}")
        held = _block_done(jobs, status)
        for name, outcome in status.items():
            if outcome == "skipped":
                self.say(name, "done already, skipped")
            elif outcome == "unneeded":
                self.say(name, "not done, but nothing left to run needs it: skipped")
        pending = [j for j in jobs if j.name not in status]
        needs = [j.name for j in pending if any(status.get(d) == "unneeded" for d in j.deps)]
        if needs:
            raise ValueError(f"jobs {needs} need jobs marked unneeded")
        running: dict[str, _Running] = {}
        bar = tqdm.tqdm(
            total=len(jobs),
            initial=len(status),
            unit="job",
            disable=not self.progress,
            file=sys.stdout,
            dynamic_ncols=True,
        )
        if not self.echo:
            for name, failure in self.failures.items():
                bar.write(f"[{self.tag}] failed: {name} ({failure.reason})")
            for name, failed in held.items():
                bar.write(f"[{self.tag}] blocked: {name} (failed: {', '.join(failed)})")
        shown = None
        try:
            while pending or running:
                for name, r in list(running.items()):
                    outcome = r.poll()
                    if outcome is None:
                        continue
                    del running[name]
                    status[name] = outcome
                    bar.update(1)
                    if r.failure is not None:
                        self.failures[name] = r.failure
                    if outcome == "done" and on_done is not None:
                        try:
                            on_done(r.job)
                        except Exception as e:  # e.g. a full disk: the job itself succeeded
                            bar.write(f"[{self.tag}] {name}: after it finished: {e!r}")
                    if self.echo:
                        if outcome == "done":
                            self.say(name, f"finished in {r.seconds():.0f} s")
                    else:
                        line = f"{outcome}: {name} ({r.seconds():.0f} s; {r.log_path})"
                        bar.write(f"[{self.tag}] {line}")
                for job in list(pending):
                    failed = [d for d in job.deps if status.get(d) in ("failed", "blocked")]
                    if failed:
                        pending.remove(job)
                        status[job.name] = "blocked"
                        bar.update(1)
                        if not self.echo:
                            line = f"blocked: {job.name} (failed: {', '.join(failed)})"
                            bar.write(f"[{self.tag}] {line}")
                        continue
                    ready = all(status.get(d) in ("done", "skipped") for d in job.deps)
                    if ready and len(running) < self.parallel:
                        pending.remove(job)
                        self.say(job, f"running (log: {self.log_path(job)})")
                        running[job.name] = _Running(self, job)
                if list(running) != shown:  # redraw on changes only: logs stay small
                    shown = list(running)
                    bar.set_postfix_str(", ".join(shown), refresh=True)
                if tick is not None:
                    tick()
                if running:
                    time.sleep(0.5)
                elif pending:  # nothing can start: a dependency cycle (a plan bug)
                    raise RuntimeError(f"jobs cannot start: {[j.name for j in pending]}")
        finally:
            for r in running.values():
                r.stop()
            bar.close()
        return status


def _block_done(jobs: Sequence[Job], status: dict[str, str]) -> dict[str, list[str]]:
    """Done jobs ("skipped" in `status`) that need a failed or blocked one become "blocked";
    returns them with the jobs they need that did not finish."""
    held = {}
    changed = True
    while changed:
        changed = False
        for j in jobs:
            if status.get(j.name) != "skipped":
                continue
            failed = [d for d in j.deps if status.get(d) in ("failed", "blocked")]
            if failed:
                status[j.name] = "blocked"
                held[j.name] = failed
                changed = True
    return held


class _Running:
    """A job in progress: its commands run one after another in the background."""

    def __init__(self, scheduler: Scheduler, job: Job):
        self.scheduler, self.job = scheduler, job
        self.log_path = scheduler.log_path(job)
        self.partial = scheduler.path("stamps", f"{job.name}.partial.json")
        self.earlier = (_load(self.partial) or {}).get("seconds", 0.0)
        self.start = time.time()
        self.log = open(self.log_path, "ab")  # noqa: SIM115 (closed when the job ends)
        self.proc = self.argv = self.tee = None
        self.queue = None
        self.failure: Failure | None = None
        try:
            if job.before is not None:
                job.before()
            self.queue = job.argv_lists()
        except Exception as e:  # a bad plan value must fail this job, not the study
            self._write(f"\n[{scheduler.tag}] could not start {job.name}: {e!r}\n")
            self.failure = Failure(f"could not start: {e!r}", error=e)
            self.queue = None
        self._next()

    def _write(self, text: str) -> None:
        self.log.write(text.encode())
        self.log.flush()

    def _next(self) -> None:
        if not self.queue:
            self.proc = None
            return
        self.argv = argv = self.queue.pop(0)
        self._write("\n$ " + " ".join(argv) + "\n")
        echo = self.scheduler.echo
        self.scheduler.say(self.job, f"$ {' '.join(argv)}")
        self.proc = subprocess.Popen(
            argv,
            cwd=self.scheduler.repo,
            env=self.scheduler.job_env(),
            stdout=subprocess.PIPE if echo else self.log,
            stderr=subprocess.STDOUT,
        )
        if echo:
            self.tee = threading.Thread(target=self._tee, args=(sys.stdout.buffer,), daemon=True)
            self.tee.start()

    def _tee(self, out) -> None:
        """Copies the command's output to `out` and the log; raw chunks, not lines: tqdm redraws
        with '\\r' and would otherwise appear only at the end."""
        pipe = self.proc.stdout
        while chunk := os.read(pipe.fileno(), 65536):
            out.write(chunk)
            out.flush()
            self.log.write(chunk)
            self.log.flush()
        pipe.close()

    def _join_tee(self) -> None:
        if self.tee is not None:
            self.tee.join(timeout=30)
            self.tee = None

    def seconds(self) -> float:
        return self.earlier + time.time() - self.start

    def poll(self) -> str | None:
        """None while running; then "done" or "failed"."""
        if self.queue is None:
            return self._finish(False)
        while self.proc is not None:
            rc = self.proc.poll()
            if rc is None:
                return None
            self._join_tee()
            if rc != 0:
                self._write(f"\n[{self.scheduler.tag}] exit code {rc}\n")
                self.failure = Failure(f"exit code {rc}", argv=self.argv)
                return self._finish(False)
            self._next()
        return self._finish(True)

    def _finish(self, ok: bool) -> str:
        missing = [p for p in self.job.outputs if not os.path.exists(p)] if ok else []
        if missing:
            self._write(f"\n[{self.scheduler.tag}] finished without its outputs: {missing}\n")
            self.failure = Failure(f"finished without its outputs: {missing}")
            ok = False
        elif ok and (misfit := self.scheduler.misfit(self.job)) is not None:
            self._write(f"\n[{self.scheduler.tag}] finished, but does not fit: {misfit.reason}\n")
            self.failure, ok = misfit, False
        self.log.close()
        if ok:
            stamp = {"job": self.job.name, "seconds": round(self.seconds(), 1)}
            _dump(self.scheduler.stamp_path(self.job), {**stamp, "finished": time.time()})
            if os.path.exists(self.partial):
                os.remove(self.partial)
            return "done"
        _dump(self.partial, {"job": self.job.name, "seconds": round(self.seconds(), 1)})
        return "failed"

    def stop(self) -> None:
        """Interrupt: stop the command, keep the time spent for the next attempt's stamp."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._join_tee()
        if not self.log.closed:
            self.log.close()
            _dump(self.partial, {"job": self.job.name, "seconds": round(self.seconds(), 1)})
