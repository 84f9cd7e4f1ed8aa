"""Runs a study's jobs: dependencies first, several at once, resumable, one log per job.

A job counts as done when all its outputs exist and, unless it is unstamped (data preparation,
whose tools mark their own completion), its stamp `OUT/stamps/<job>.json`, written after its
commands succeeded. A rerun skips done jobs and restarts the others (training resumes from its
checkpoints, pseudo-labelling keeps its finished shards). A failed job does not stop the others;
the jobs that depend on it are reported as blocked.

Parallel jobs share the machine's cores: each runs with `TF_NUM_INTRAOP_THREADS` (and inter-op)
set to `cores // parallel`, which on a small CPU gives more throughput than one job using every
core, because small models leave threads idle between ops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

import tqdm

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


class Scheduler:
    """Runs `Job`s of one study directory.

    Args:
        out_dir: the study directory (logs/ and stamps/ go there).
        repo: working directory of every command.
        parallel: jobs running at once.
        cores: CPU cores to share between them (default: all the machine has).
        env: base environment of the commands (default: this process's).
        progress: show a progress bar over jobs.
    """

    def __init__(self, out_dir, repo=".", parallel=1, cores=None, env=None, progress=True):
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        self.out_dir, self.repo, self.parallel = out_dir, repo, int(parallel)
        self.cores = int(cores or os.cpu_count() or 1)
        self.env = dict(os.environ if env is None else env)
        self.progress = progress
        os.makedirs(self.path("logs"), exist_ok=True)
        os.makedirs(self.path("stamps"), exist_ok=True)

    def path(self, *parts: str) -> str:
        return os.path.join(self.out_dir, *parts)

    def stamp_path(self, job: Job) -> str:
        return stamp_path(self.out_dir, job.name)

    def log_path(self, job: Job) -> str:
        return self.path("logs", f"{job.name}.log")

    def done(self, job: Job) -> bool:
        stamp_ok = not job.stamped or os.path.exists(self.stamp_path(job))
        return stamp_ok and all(os.path.exists(p) for p in job.outputs)

    def job_env(self) -> dict[str, str]:
        env = dict(self.env)
        threads = str(max(1, self.cores // self.parallel))
        env.setdefault("TF_NUM_INTRAOP_THREADS", threads)
        env.setdefault("TF_NUM_INTEROP_THREADS", threads)
        env.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def run(self, jobs: Sequence[Job], tick=None) -> dict[str, str]:
        """Runs every job not done yet; returns `{job: "done"|"skipped"|"failed"|"blocked"}`.
        `tick()`, if given, is called about twice a second while jobs run (e.g. `WallClock`)."""
        names = [j.name for j in jobs]
        if len(set(names)) != len(names):
            raise ValueError("job names repeat")
        by_name = {j.name: j for j in jobs}
        for j in jobs:
            unknown = [d for d in j.deps if d not in by_name]
            if unknown:
                raise ValueError(f"job {j.name} depends on unknown jobs {unknown}")
        status = {j.name: "skipped" for j in jobs if self.done(j)}
        pending = [j for j in jobs if j.name not in status]
        running: dict[str, _Running] = {}
        bar = tqdm.tqdm(
            total=len(jobs),
            initial=len(status),
            unit="job",
            disable=not self.progress,
            file=sys.stdout,
            dynamic_ncols=True,
        )
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
                    bar.write(f"[study] {outcome}: {name} ({r.seconds():.0f} s; {r.log_path})")
                for job in list(pending):
                    failed = [d for d in job.deps if status.get(d) in ("failed", "blocked")]
                    if failed:
                        pending.remove(job)
                        status[job.name] = "blocked"
                        bar.update(1)
                        bar.write(f"[study] blocked: {job.name} (failed: {', '.join(failed)})")
                        continue
                    ready = all(status.get(d) in ("done", "skipped") for d in job.deps)
                    if ready and len(running) < self.parallel:
                        pending.remove(job)
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


class _Running:
    """A job in progress: its commands run one after another in the background."""

    def __init__(self, scheduler: Scheduler, job: Job):
        self.scheduler, self.job = scheduler, job
        self.log_path = scheduler.log_path(job)
        self.partial = scheduler.path("stamps", f"{job.name}.partial.json")
        self.earlier = (_load(self.partial) or {}).get("seconds", 0.0)
        self.start = time.time()
        self.log = open(self.log_path, "ab")  # noqa: SIM115 (closed when the job ends)
        self.proc = None
        self.queue = None
        try:
            if job.before is not None:
                job.before()
            self.queue = job.argv_lists()
        except Exception as e:  # a bad plan value must fail this job, not the study
            self._write(f"\n[study] could not start {job.name}: {e!r}\n")
            self.queue = None
        self._next()

    def _write(self, text: str) -> None:
        self.log.write(text.encode())
        self.log.flush()

    def _next(self) -> None:
        if not self.queue:
            self.proc = None
            return
        argv = self.queue.pop(0)
        self._write("\n$ " + " ".join(argv) + "\n")
        self.proc = subprocess.Popen(
            argv,
            cwd=self.scheduler.repo,
            env=self.scheduler.job_env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

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
            if rc != 0:
                self._write(f"\n[study] exit code {rc}\n")
                return self._finish(False)
            self._next()
        return self._finish(True)

    def _finish(self, ok: bool) -> str:
        missing = [p for p in self.job.outputs if not os.path.exists(p)] if ok else []
        if missing:
            self._write(f"\n[study] finished without its outputs: {missing}\n")
            ok = False
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
        if not self.log.closed:
            self.log.close()
            _dump(self.partial, {"job": self.job.name, "seconds": round(self.seconds(), 1)})
