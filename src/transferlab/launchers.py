"""Where a study's runs execute: in this process, as local processes, or as a Slurm job array (submitit).

    inprocess   one run after another in this Python process (the default)
    local       each run in its own process through submitit's LocalExecutor, `parallel` at a time (default 1)
    slurm       one Slurm job array through submitit: a task per run, logs in STUDY/jobs/

Every launcher gets the same jobs (a run's name and its TrainConfig, which pickles) and does one thing with them,
`launch`. Each run is `training.train` with resume=True wherever it executes, so a finished run is kept and an
interrupted one resumes from its last checkpoint; a Slurm task that reaches its time limit is requeued by submitit
and resumes the same way.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import TrainConfig
from .errors import TransferlabError
from .machine import cpus
from .rundir import write_json

LAUNCHERS = ("inprocess", "local", "slurm")
NO_LIMIT_MIN = 7 * 24 * 60       # local processes: submitit's LocalExecutor would otherwise stop them after 2 min
ACTIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}


@dataclass
class LaunchSettings:
    launcher: str = "inprocess"
    parallel: int | None = None        # local: runs at once (default 1); slurm: array tasks at once (default all)
    partition: str | None = None       # slurm partition (default: the cluster's)
    time_min: int | None = None        # per-run time limit in minutes (slurm default: the partition's; local: none)
    gpus_per_task: int | None = None   # slurm default 0; local default: every visible GPU, shared
    cpus_per_task: int | None = None   # slurm: CPUs per run (and torch threads); local default: CPUs / parallel
    mem_gb: float | None = None        # slurm: memory per run (default: the partition's)
    wait: bool = True                  # slurm: wait for the runs and write the report; False: submit and return

    def __post_init__(self):
        if self.launcher not in LAUNCHERS:
            raise TransferlabError(f"--launcher must be one of {', '.join(LAUNCHERS)}, not {self.launcher!r}")
        for name in ("parallel", "time_min", "cpus_per_task"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise TransferlabError(f"--{_flag(name)} must be at least 1, not {getattr(self, name)}")
        if self.gpus_per_task is not None and self.gpus_per_task < 0:
            raise TransferlabError(f"--gpus-per-task must be 0 or more, not {self.gpus_per_task}")

    @classmethod
    def from_dict(cls, values: dict | LaunchSettings) -> LaunchSettings:
        if isinstance(values, cls):
            return values
        if not isinstance(values, dict):
            raise TransferlabError(f"study setting launch must be a mapping of launcher settings, not {values!r}")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TransferlabError(f"unknown launch setting(s): {', '.join(unknown)}")
        return cls(**values)


def _flag(name: str) -> str:
    return {"time_min": "time"}.get(name, name.replace("_", "-"))


@dataclass(frozen=True)
class Job:
    name: str             # the run's folder name
    config: TrainConfig   # with resume=True
    label: str            # "run 3/8: resnet50 finetune seed 0 (resuming)"


@dataclass
class Outcome:
    failed: dict[str, str] = field(default_factory=dict)   # run name -> the error's last line and its log file
    submitted: bool = False                                 # handed to Slurm and not waited for (wait=False)


@dataclass(frozen=True)
class RunJob:
    """One run, in whatever process or node the launcher chose; returns the run directory. When a Slurm task nears
    its time limit, submitit calls `checkpoint` and requeues the same run, which resumes from its last epoch.
    max_threads: torch's thread count before the run, which a run without --threads still reduces to the CPUs free
    when it starts (runtime.choose_threads)."""
    max_threads: int | None = None

    def __call__(self, config: TrainConfig) -> str:
        from .training import train

        if self.max_threads:
            import torch

            torch.set_num_threads(self.max_threads)
        return str(train(config).path)

    def checkpoint(self, config: TrainConfig):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, config)


run_job = RunJob()


def launch(jobs: list[Job], settings: LaunchSettings, folder: Path) -> Outcome:
    """Run `jobs` with the launcher `settings` name; submitit's files and the runs' logs go to `folder`."""
    return {"inprocess": _inprocess, "local": _local, "slurm": _slurm}[settings.launcher](jobs, settings, Path(folder))


def _inprocess(jobs: list[Job], settings: LaunchSettings, folder: Path) -> Outcome:
    for job in jobs:    # an error stops the study at once, as `train` would
        print(job.label, flush=True)
        run_job(job.config)
    return Outcome()


def _local(jobs: list[Job], settings: LaunchSettings, folder: Path) -> Outcome:
    """At most `parallel` runs at once, each with its share of the CPUs as torch threads (more threads than free
    cores make every operation wait for its slowest thread). Ctrl-C stops the running processes too."""
    import submitit
    import torch

    parallel = settings.parallel or 1
    executor = submitit.AutoExecutor(folder, cluster="local")
    gpus = settings.gpus_per_task if settings.gpus_per_task is not None else torch.cuda.device_count()
    executor.update_parameters(timeout_min=settings.time_min or NO_LIMIT_MIN, gpus_per_node=gpus)
    task = RunJob(max_threads=settings.cpus_per_task or max(1, cpus() // parallel))
    pending, running, outcome = list(jobs), {}, Outcome()
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                running[job.name] = submitted = executor.submit(task, job.config)
                print(f"{job.label}: local process {submitted.job_id}, log {submitted.paths.stderr}", flush=True)
            for name in [name for name, submitted in running.items() if submitted.done()]:
                _report(name, running.pop(name), outcome)
            time.sleep(0.2)
    except BaseException:
        for submitted in running.values():
            submitted.cancel()
        raise
    return outcome


def _slurm(jobs: list[Job], settings: LaunchSettings, folder: Path) -> Outcome:
    """One job array for the runs that are not already queued or running from an earlier launch of the study
    (those are waited for, not submitted twice)."""
    import submitit

    if not jobs:
        return Outcome()
    try:
        executor = submitit.AutoExecutor(folder, cluster="slurm")
    except RuntimeError as exc:   # no srun/sbatch on this machine
        raise TransferlabError(f"--launcher slurm: {exc} (submit from the cluster's login node, or print the runs' "
                               f"commands with --plan for another scheduler)") from None
    record = folder / "submitted.json"
    known = json.loads(record.read_text()) if record.exists() else {}
    active = {job.name: submitit.SlurmJob(folder, known[job.name])
              for job in jobs if job.name in known}
    active = {name: submitted for name, submitted in active.items()
              if (submitted.get_info(mode="force").get("State") or "UNKNOWN").split()[0] in ACTIVE_SLURM_STATES}
    fresh = [job for job in jobs if job.name not in active]
    executor.update_parameters(
        name="transferlab", timeout_min=settings.time_min, gpus_per_node=settings.gpus_per_task,
        cpus_per_task=settings.cpus_per_task, mem_gb=settings.mem_gb, slurm_partition=settings.partition,
        **({"slurm_array_parallelism": settings.parallel} if settings.parallel else {}))
    threads = settings.cpus_per_task   # torch would count the node's cores, not the task's
    configs = [job.config if job.config.threads or not threads else dataclasses.replace(job.config, threads=threads)
               for job in fresh]
    submitted = dict(zip((job.name for job in fresh), executor.map_array(run_job, configs) if fresh else []))
    write_json(record, {**known, **{name: s.job_id for name, s in submitted.items()}})
    for job in jobs:
        what = f"already Slurm job {active[job.name].job_id}" if job.name in active else \
            f"Slurm job {submitted[job.name].job_id}, log {submitted[job.name].paths.stderr}"
        print(f"{job.label}: {what}", flush=True)
    everything = {**active, **submitted}
    if not settings.wait:
        return Outcome(submitted=True)
    outcome = Outcome()
    try:
        while everything:
            for name in [name for name, job in everything.items() if job.done()]:
                _report(name, everything.pop(name), outcome)
            time.sleep(10)
    except KeyboardInterrupt:
        print(f"interrupted: {len(everything)} Slurm job(s) keep running; launch the study again to wait for them",
              flush=True)
        raise
    return outcome


def _report(name: str, submitted, outcome: Outcome) -> None:
    error = submitted.exception()
    if error is None:
        print(f"finished: {name}", flush=True)
        return
    why = str(error).strip().splitlines()[0]   # e.g. "... has not produced any output (state: INTERRUPTED)"
    if submitted.paths.result_pickle.exists():  # submitit's record of a job that raised: ("error", traceback)
        from submitit.core.utils import pickle_load

        status, trace = pickle_load(submitted.paths.result_pickle)
        why = trace.strip().splitlines()[-1] if status == "error" else why
    outcome.failed[name] = f"{why} (log: {submitted.paths.stderr})"
    print(f"failed: {name}: {outcome.failed[name]}", flush=True)
