"""Study fan-out: the same runs in this process, as local processes (submitit's LocalExecutor), as printed commands
run by "another scheduler" (--plan, then --collect), and as a Slurm job array (submitit, against a stand-in sbatch).
Every way gives the same numbers as the in-process study; a failed run is named with its log, and launching the
study again keeps the finished runs and runs only the rest."""
from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys

import pytest

from transferlab import cli
from transferlab.analysis import comparison as analysis_comparison
from transferlab.errors import TransferlabError
from transferlab.launchers import LaunchSettings
from transferlab.rundir import RunDir, read_csv
from transferlab.study.config import StudyConfig, read_study_file
from transferlab.study.run import run_study

pytestmark = pytest.mark.usefixtures("one_thread")

# threads=1 in every process: the same arithmetic in and out of process, and no oversubscribed CPUs
TRAIN = dict(image_size=48, epochs=2, batch_size=16, max_images=12, val_fraction=0.25, progress=False, threads=1)
DIFFERS = ("run", "seconds_", "peak_rss_mb")   # columns that measure the machine, not the result


def _config(data, out, **launch) -> StudyConfig:
    return StudyConfig(data=str(data), models=["efficientnet_lite0"], strategies=["features"], seeds=2, out=str(out),
                       measure_catalog=False, train=TRAIN, launch=launch)


def _results(study) -> dict:
    return {(r["model"], r["strategy"], r["seed"]): {k: v for k, v in r.items() if not k.startswith(DIFFERS)}
            for r in read_csv(study / "results.csv")}


@pytest.fixture(autouse=True)
def _quick_report(monkeypatch):
    monkeypatch.setattr(analysis_comparison, "N_BOOT", 50)


@pytest.fixture(scope="module")
def reference(xray_dir, tmp_path_factory):
    """The study run the ordinary way, in this process."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(analysis_comparison, "N_BOOT", 50)
        return _results(run_study(_config(xray_dir, tmp_path_factory.mktemp("inprocess") / "s")))


def test_local_processes_failed_run_named_then_relaunched(xray_dir, tmp_path, reference, capsys):
    out = tmp_path / "s"
    blocked = out / "runs" / "efficientnet_lite0-features-seed1"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the run directory belongs")   # that run's process fails
    config = _config(xray_dir, out, launcher="local", parallel=2)
    with pytest.raises(TransferlabError, match=r"1 of 2 runs failed: efficientnet_lite0-features-seed1: .*File"
                                               r"ExistsError.*\(log: .*jobs/.*\.err\)"):
        run_study(config)
    kept = RunDir(out / "runs" / "efficientnet_lite0-features-seed0")
    assert kept.finished() and not (out / "results.csv").exists()
    before = kept.metrics.stat().st_mtime_ns
    blocked.unlink()
    capsys.readouterr()
    run_study(read_study_file(out / "study.yaml"))   # launched again: the same launcher, from the saved study
    printed = capsys.readouterr().out
    assert "run 1/2: efficientnet_lite0 features seed 0 (finished: kept)" in printed
    assert "run 2/2: efficientnet_lite0 features seed 1: local process" in printed
    assert kept.metrics.stat().st_mtime_ns == before
    assert _results(out) == reference   # the same numbers as in this process
    assert read_study_file(out / "study.yaml").launch == LaunchSettings(launcher="local", parallel=2)


def test_plan_commands_then_collect_rebuild_the_study(xray_dir, tmp_path, reference, capsys):
    out = tmp_path / "s"
    study_args = ["study", "--data", str(xray_dir), "--models", "efficientnet_lite0", "--strategies", "features",
                  "--seeds", "2", "--out", str(out), "--no-catalog", "--image-size", "48", "--epochs", "2",
                  "--batch-size", "16", "--max-images", "12", "--val-fraction", "0.25", "--no-progress",
                  "--threads", "1"]
    assert cli.main([*study_args, "--plan"]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 2 and all(c.startswith("transferlab train --config ") for c in commands)
    # nothing has run yet: --collect names the missing runs
    assert cli.main(["study", str(out / "study.yaml"), "--collect"]) == 2
    assert ("2 of 2 runs of" in capsys.readouterr().err and not (out / "results.csv").exists())
    for command in commands:   # what any scheduler would do with them
        argv = shlex.split(command)
        subprocess.run([sys.executable, "-m", "transferlab", *argv[1:]], check=True, capture_output=True)
    assert cli.main(["study", str(out / "study.yaml"), "--collect"]) == 0
    assert _results(out) == reference
    assert (out / "report.html").exists()
    # a finished study plans nothing more
    capsys.readouterr()
    assert cli.main([*study_args, "--plan"]) == 0 and capsys.readouterr().out.strip() == ""


def _stand_in(folder, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_job_array_with_options_and_no_double_submission(xray_dir, tmp_path, monkeypatch, capsys):
    """No cluster here: stand-ins for srun, sbatch and sacct record what submitit asks of Slurm."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    _stand_in(bin_, "srun", "exit 0\n")
    _stand_in(bin_, "sbatch", f'cat "$1" >> {tmp_path}/sbatch.txt\necho "Submitted batch job 4242"\n')
    _stand_in(bin_, "sacct", 'echo "JobID|State|NodeList"\necho "4242_0|RUNNING|node1"\necho "4242_1|PENDING|"\n')
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "s"
    args = ["study", "--data", str(xray_dir), "--models", "efficientnet_lite0", "--strategies", "features", "--seeds",
            "2", "--out", str(out), "--no-catalog", "--launcher", "slurm", "--partition", "gpu", "--time", "30",
            "--gpus-per-task", "1", "--cpus-per-task", "4", "--mem-gb", "16", "--parallel", "1", "--no-wait"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "run 1/2: efficientnet_lite0 features seed 0: Slurm job 4242_0" in printed
    assert f"transferlab study {out / 'study.yaml'} --collect" in printed
    script = (tmp_path / "sbatch.txt").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16GB", "#SBATCH --array=0-1%1",
                 f"#SBATCH --output={out / 'jobs'}/%A_%a_0_log.out"):
        assert line in script, line
    # launched again while Slurm still holds both tasks: nothing is submitted twice
    assert cli.main(args) == 0
    assert "seed 1: already Slurm job 4242_1" in capsys.readouterr().out
    assert (tmp_path / "sbatch.txt").read_text() == script


def test_slurm_needs_a_cluster_and_launch_settings_are_checked(xray_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))   # no srun
    assert cli.main(["study", "--data", str(xray_dir), "--models", "efficientnet_lite0", "--out", str(tmp_path / "s"),
                     "--launcher", "slurm"]) == 2
    assert "--launcher slurm: Could not detect \"srun\"" in capsys.readouterr().err
    for bad, message in [(dict(launcher="mpi"), "^launcher= must be one of"), (dict(parallel=0), "^parallel="),
                         (dict(queue="x"), "unknown launch setting")]:
        with pytest.raises(TransferlabError, match=message):
            _config(xray_dir, tmp_path / "t", **bad)


def test_a_slurm_task_at_its_time_limit_is_requeued_as_the_same_run(tmp_path):
    """submitit calls checkpoint() near the time limit and requeues what it returns: the same run (which resumes
    from its last checkpoint, because every study run has resume=True)."""
    import pickle

    from transferlab.config import TrainConfig
    from transferlab.launchers import RunJob, run_job

    config = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), resume=True)
    again = pickle.loads(pickle.dumps(run_job.checkpoint(config)))
    assert isinstance(again.function, RunJob) and again.args == (config,) and again.args[0].resume
