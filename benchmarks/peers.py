#!/usr/bin/env python
"""transferlab side by side with the tools a user would pick instead: fastai and the torchvision tutorial loop.

    pip install -e '.[peers]'        # fastai 2.8: a benchmark dependency only; src/transferlab never imports it
    python benchmarks/peers.py --data ../shared/data/chest_xray --max-images 1000 --epochs 4 [--test DIR]

Every contender gets the same things:
  - the files: transferlab's patient-disjoint train / val / test split of --data (its own split code, seed
    --seed, at most --max-images per split, class-stratified), built here once; each transferlab run's splits.csv
    is checked against it, and fastai and the tutorial loop are handed exactly those files;
  - the weights: EfficientNet-Lite0's genuine ImageNet weights (the offline package), from
    `transferlab.create_model(--model, 2)` after the same seeding. transferlab and the tutorial loop train its new
    linear head; fastai gets what `vision_learner` builds on a custom body: the backbone's feature map
    (`extract_features` / `forward_features`), fastai's `create_head` (concat pool, BatchNorm, dropout, a 512-wide
    hidden layer) initialised with kaiming_normal_, and `default_split` [body, head];
  - the image size (--image-size, default the model's) and the model's normalisation (mean/std of its registry
    entry); every contender squashes the whole image to a square (no crop), except --baseline-recipe tutorial;
  - the epochs budget (--epochs): passes over the training images through the backbone. fastai's `fine_tune`
    runs 1 frozen epoch + (--epochs - 1) unfrozen; transferlab finetune --epochs; lpft phase 2 --epochs (after its
    default 30 head epochs on cached features); the tutorial loop --epochs. `features` runs the backbone once and
    trains the head for its default 30 epochs on the cached features (--features-epochs).

Contenders (--contenders, in this order; each in a child process of its own, one after the other):
  fastai          fastai 2.8 `Learner(dls, body + create_head, splitter=default_split)` frozen as vision_learner
                  leaves it, `fine_tune(epochs - 1)` with its defaults: base_lr 2e-3, 1 frozen epoch (one-cycle,
                  pct_start 0.99), then unfrozen with discriminative lr slice(base_lr/200, base_lr/2), one-cycle;
                  Adam (wd 0.01), BatchNorm trained while frozen (train_bn), batch 64, unweighted cross-entropy;
                  `aug_transforms()` (flip, rotate 10, zoom 1.1, warp 0.2, lighting 0.2) on the GPU/CPU batch;
                  decodes every JPEG every epoch in its DataLoader workers (fastai's default number).
  fastai_lr_find  the same, with base_lr = `lr_find()`'s suggestion (fastai 2.8 returns SuggestedLRs(valley=...));
                  the range test (--lr-find-it mini-batches, fastai's default 100) counts in its wall time.
  tl_features     transferlab.train(strategy="features") with its defaults
  tl_finetune     transferlab.train(strategy="finetune", epochs=--epochs) with its defaults
  tl_lpft         transferlab.train(strategy="lpft", epochs=--epochs) with its defaults
  tutorial        the torchvision tutorial's train_model loop, imported from benchmarks/transfer_speed.py
                  (run_baseline "finetune", batch 32, --baseline-workers DataLoader workers; on the CPU only, as
                  run_baseline is written). --baseline-recipe ours (default, as transfer_speed.py): transferlab's
                  augmentation, AdamW + cosine, learning rates and class weights, so that only the engineering
                  differs (BatchNorm statistics are updated, as model.train() does); tutorial: the tutorial's own.
On a CUDA machine fastai (with to_fp16) and transferlab (its 16-mixed default) train on the GPU.

For each: wall time (building the data pipeline and model, training, and the validation and test probabilities;
not the process start and imports, printed apart), the time until validation AUC first reaches 0.99 and 0.995
(measured at the end of each epoch's validation pass, from the contender's start), peak RSS of the process (and
of its largest child: decode or DataLoader workers), CPU seconds (user + system of the process and its workers,
imports and --test scoring included; other load inflates them too, though less than wall time), validation and test
AUC, accuracy at 0.5 and at the threshold chosen on validation (transferlab.metrics.choose_threshold, Youden), a 95%
bootstrap interval of the test AUC, and per epoch its time, images/s and validation AUC. --test DIR scores a folder of class folders with every
trained model (threshold from validation). os.getloadavg() is printed before and after each contender.

Validation AUC per epoch: fastai, from the validation pass's own predictions (a callback); transferlab, the rows
of history.csv (val_auc, each epoch's seconds) timed by a wrapper around Classifier.on_validation_epoch_end;
the tutorial loop, its history. The last line:
  SUMMARY finetune_time_ratio_vs_fastai=<a> features_time_ratio_vs_fastai=<b> auc_delta_vs_fastai=<c> ...
a: time transferlab finetune took to first reach the final validation AUC of fastai fine_tune / fastai fine_tune's
   wall time (inf: never reached it; target <= 0.7);
b: time transferlab features took to reach validation AUC 0.99 / the time fastai fine_tune took to reach it (its
   wall time if it never did: the ratio is then an upper bound; target <= 0.2);
c: test AUC of transferlab finetune - test AUC of fastai fine_tune; also features_auc_delta_vs_fastai and
   finetune_rss_ratio_vs_fastai (peak RSS of the process, target <= 1).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONTENDERS = ("fastai", "fastai_lr_find", "tl_features", "tl_finetune", "tl_lpft", "tutorial")
LABELS = {"fastai": "fastai fine_tune", "fastai_lr_find": "fastai fine_tune, lr_find", "tl_features":
          "transferlab features", "tl_finetune": "transferlab finetune", "tl_lpft": "transferlab lpft",
          "tutorial": "torchvision tutorial loop"}
TARGETS = (0.99, 0.995)
GB = 2**30


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring (top of benchmarks/peers.py) for what each "
                                       "contender runs and how the SUMMARY ratios are defined.")
    p.add_argument("--data", default="../shared/data/chest_xray", help="dataset folder (class folders)")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--max-images", type=int, default=300, help="at most this many images per split (train, val, "
                                                               "test), class-stratified; 0 = all (default 300)")
    p.add_argument("--image-size", type=int, help="image size of every contender (default: the model's, 224)")
    p.add_argument("--epochs", type=int, default=3, help="epochs budget: passes over the training images through "
                                                         "the backbone (fastai: 1 frozen + N-1 unfrozen; at least 2)")
    p.add_argument("--features-epochs", type=int, help="head epochs of transferlab features on cached features "
                                                       "(default: its own, 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test", help="also score this folder of class folders with every trained model")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help=f"comma-separated, run in this order (default: all: {','.join(CONTENDERS)})")
    p.add_argument("--fastai-bs", type=int, default=64, help="fastai's batch size (its default 64; capped at the "
                                                             "training images)")
    p.add_argument("--lr-find-it", type=int, default=100, help="fastai lr_find's num_it: mini-batches of the range "
                                                                "test (its default 100)")
    p.add_argument("--baseline-recipe", choices=("ours", "tutorial"), default="ours",
                   help="tutorial loop: the tutorial's own recipe (SGD 1e-3 momentum 0.9, StepLR, RandomResizedCrop "
                        "+ flip, resize + centre crop for evaluation), or transferlab's (transfer_speed.py)")
    p.add_argument("--baseline-workers", type=int, default=2, help="tutorial loop DataLoader workers")
    p.add_argument("--threads", type=int, help="torch threads in every contender (default: torch's / transferlab's)")
    p.add_argument("--work-dir", help="runs, caches and logs (default: a temporary folder, removed at the end)")
    p.add_argument("--json", help="also write every measurement to this JSON file")
    p.add_argument("--child", help=argparse.SUPPRESS)   # internal: run one contender (a child process)
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (fastai's fine_tune: one frozen epoch, then at least one unfrozen)")
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown or not names:
        p.error(f"--contenders: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(CONTENDERS)}")
    args.contenders = names
    return args


# =============================================================================================== parent process

def build_job(args, work: Path) -> dict:
    """transferlab's own split (what train() will use) and everything a contender needs, as JSON."""
    from transferlab.config import TrainConfig
    from transferlab.data.discover import discover
    from transferlab.data.split import make_splits
    from transferlab.evaluation import positive_index
    from transferlab.models.registry import get_spec
    from transferlab.training import _subsample

    cfg = TrainConfig(data=args.data, model=args.model, seed=args.seed, max_images=args.max_images or None)
    index = discover(cfg.data, patient_pattern=cfg.patient_pattern, manifest=cfg.manifest)
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    splits = make_splits(index, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=split_seed,
                         official_val=cfg.official_val)
    classes = index.classes
    if len(classes) != 2:
        raise SystemExit(f"peers.py compares binary classifiers (AUC of the positive class); {cfg.data} has "
                         f"{len(classes)} classes")
    spec = get_spec(args.model)
    job = {"data": str(index.root), "model": args.model, "classes": classes, "pos": positive_index(classes),
           "image_size": args.image_size or spec.input_size, "mean": list(spec.mean), "std": list(spec.std),
           "epochs": args.epochs, "features_epochs": args.features_epochs, "max_images": args.max_images or None,
           "seed": args.seed, "threads": args.threads, "fastai_bs": args.fastai_bs, "lr_find_it": args.lr_find_it,
           "baseline_recipe": args.baseline_recipe, "baseline_workers": args.baseline_workers, "work": str(work),
           "splits": {}, "external": None}
    for name in ("train", "val", "test"):
        chosen = _subsample(getattr(splits, name), cfg.max_images, split_seed)
        job["splits"][name] = [[index.relative(s), s.label, s.patient] for s in chosen]
    if args.test:
        ext = discover(args.test)
        missing = sorted(set(ext.classes) - set(classes))
        if missing:
            raise SystemExit(f"--test {args.test}: classes {missing} are not among the training classes {classes}")
        job["external"] = {"root": str(ext.root),
                           "files": [[str(s.path), classes.index(ext.classes[s.label])] for s in ext.samples]}
    return job


def check_split(run_path: str, job: dict) -> None:
    """A transferlab run's splits.csv must list exactly the files the other contenders were given."""
    from transferlab.rundir import read_csv

    rows = read_csv(Path(run_path) / "splits.csv")
    for name, files in job["splits"].items():
        theirs = sorted(r["file"] for r in rows if r["split"] == name)
        mine = sorted(f for f, _, _ in files)
        if theirs != mine:
            raise SystemExit(f"{run_path}: its {name} split differs from the benchmark's ({len(theirs)} vs "
                             f"{len(mine)} files)")


def run_child(name: str, job_path: Path, work: Path) -> dict:
    result_path = work / f"{name}.result.json"
    log = work / f"{name}.log"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--job", str(job_path),
           "--result", str(result_path)]
    load_before = os.getloadavg()
    start = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    process_s = time.perf_counter() - start
    load_after = os.getloadavg()
    if rc != 0 or not result_path.exists():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        print(f"    FAILED (exit status {rc}); the end of {log}:\n{tail}", flush=True)
        return {"failed": rc, "load_before": load_before, "load_after": load_after, "log": str(log)}
    res = json.loads(result_path.read_text())
    res.update(load_before=load_before, load_after=load_after, process_s=process_s, log=str(log))
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    wants_fastai = any(c.startswith("fastai") for c in args.contenders)
    if wants_fastai and importlib.util.find_spec("fastai") is None:
        raise SystemExit("fastai is not installed: pip install -e '.[peers]' (fastai>=2.8,<2.9), or leave the fastai "
                         "rows out with --contenders")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="peers-"))
    work.mkdir(parents=True, exist_ok=True)
    job = build_job(args, work)
    job_path = work / "job.json"
    job_path.write_text(json.dumps(job))
    env = machine(wants_fastai)
    n = {k: len(v) for k, v in job["splits"].items()}
    print(f"# peers: model={args.model} data={job['data']} seed={args.seed}; {n['train']} train + {n['val']} val + "
          f"{n['test']} test images (max-images={args.max_images}), image size {job['image_size']}, "
          f"epochs {args.epochs}" + (f"; external test {args.test} ({len(job['external']['files'])} images)"
                                      if job["external"] else ""))
    print(f"# machine: {env['cpu']}, {env['cores']} cores, torch {env['torch']}, fastai {env['fastai']}, "
          f"python {env['python']}; load average {fmt_load(os.getloadavg())} at start", flush=True)
    results = {}
    for name in args.contenders:
        print(f"... {LABELS[name]} (load {fmt_load(os.getloadavg())})", flush=True)
        res = results[name] = run_child(name, job_path, work)
        if "failed" in res:
            continue
        if res.get("run"):
            check_split(res["run"], job)
        print(f"    {res['wall']:.1f} s wall, val AUC {res['history'][-1]['val_auc']:.4f} at the last epoch "
              f"(load {fmt_load(res['load_after'])})", flush=True)
    scored = {name: score(res, job) for name, res in results.items() if "failed" not in res}
    report(args, job, env, results, scored)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "env": env, "results": results, "scores": scored,
                                               "split_sizes": n}, indent=2, default=str))
    ok = all("failed" not in r for r in results.values())
    if not args.work_dir and ok:
        shutil.rmtree(work, ignore_errors=True)
    elif not ok:
        print(f"(kept {work}: the failed contenders' logs are there)")
    return 0 if ok else 1


def machine(with_fastai: bool) -> dict:
    sys.path.insert(0, str(HERE))
    from transfer_speed import cpu_model   # noqa: E402 (torch is imported there; the parent needs it anyway)
    import torch

    fastai = "not installed"
    if importlib.util.find_spec("fastai") is not None:
        from importlib.metadata import version
        fastai = version("fastai")
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "fastai": fastai,
            "python": platform.python_version(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else None}


def fmt_load(load) -> str:
    return " ".join(f"{x:.2f}" for x in load)


# ------------------------------------------------------------------------------------------------ scoring

def score(res: dict, job: dict) -> dict:
    """AUC and accuracies on validation, test (and --test), the threshold chosen on validation; bootstrap CI."""
    import numpy as np
    from sklearn.metrics import roc_auc_score
    from transferlab.metrics import BOOTSTRAP_METRICS, bootstrap_ci, choose_threshold

    pos = job["pos"]
    out = {}
    y_val = (np.array(res["probs"]["val"]["y"]) == pos).astype(int)
    p_val = np.array(res["probs"]["val"]["p"])
    threshold = choose_threshold(y_val, p_val, "youden")
    out["threshold"] = threshold
    for name, part in res["probs"].items():
        y, p = (np.array(part["y"]) == pos).astype(int), np.array(part["p"])
        both = len(np.unique(y)) > 1
        row = {"n": len(y), "auc": float(roc_auc_score(y, p)) if both else float("nan"),
               "acc_at_0.5": float(((p >= 0.5) == y).mean()), "acc_at_threshold": float(((p >= threshold) == y).mean())}
        if name != "val" and both:
            row["auc_ci"] = bootstrap_ci(y, p, BOOTSTRAP_METRICS["roc_auc"], n_boot=1000)
        out[name] = row
    hist = res["history"]
    out["time_to"] = {str(t): next((h["t"] for h in hist if h["val_auc"] >= t), None) for t in TARGETS}
    return out


def time_to_reach(res: dict, value: float) -> float | None:
    return next((h["t"] for h in res["history"] if h["val_auc"] >= value), None)


# ------------------------------------------------------------------------------------------------ report

def _f(x, digits=1, none="never") -> str:
    if x is None:
        return none
    if isinstance(x, float) and x != x:
        return "nan"
    return f"{x:.{digits}f}"


def report(args, job, env, results, scored) -> None:
    n = {k: len(v) for k, v in job["splits"].items()}
    print("\n" + "=" * 100)
    print(f"## peers: {args.model}, {n['train']} train + {n['val']} val + {n['test']} test images, "
          f"{job['image_size']} px, epochs budget {args.epochs}; {env['cpu']}, {env['cores']} cores, "
          f"torch {env['torch']}, fastai {env['fastai']}" + (f", GPU {env['gpu']}" if env["gpu"] else ", no GPU"))
    print()
    print("| contender | epochs | wall s | to val AUC 0.99 s | to 0.995 s | peak RSS GB (largest child) | val AUC | "
          "val acc @0.5 / @thr | test AUC [95% CI] | test acc @0.5 / @thr | imports s | CPU s | load before → after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, res in results.items():
        if "failed" in res:
            print(f"| {LABELS[name]} | failed (exit status {res['failed']}; {res['log']}) ||||||||||||")
            continue
        s = scored[name]
        v, t = s["val"], s.get("test")
        test_cells = (f"{t['auc']:.4f} [{t['auc_ci'][0]:.4f}, {t['auc_ci'][1]:.4f}] | {t['acc_at_0.5']:.4f} / "
                      f"{t['acc_at_threshold']:.4f}") if t and "auc_ci" in t else "— | —"
        print(f"| {LABELS[name]} | {res['epochs_desc']} | {res['wall']:.1f} | {_f(s['time_to']['0.99'])} | "
              f"{_f(s['time_to']['0.995'])} | {res['peak_rss_gb']:.2f} ({res['children_peak_rss_gb']:.2f}) | "
              f"{v['auc']:.4f} | {v['acc_at_0.5']:.4f} / {v['acc_at_threshold']:.4f} | {test_cells} | "
              f"{res['import_s']:.1f} | {res['cpu_s']:.0f} | {fmt_load(res['load_before'])} → "
              f"{fmt_load(res['load_after'])} |")
    if job["external"]:
        print(f"\n--test {job['external']['root']} ({len(job['external']['files'])} images; threshold from "
              f"validation):\n")
        print("| contender | AUC [95% CI] | acc @0.5 | acc @thr | scoring s |")
        print("|---|---|---|---|---|")
        for name, res in results.items():
            e = scored.get(name, {}).get("external")
            if e:
                ci = e.get("auc_ci", (float("nan"),) * 2)
                print(f"| {LABELS[name]} | {e['auc']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}] | {e['acc_at_0.5']:.4f} | "
                      f"{e['acc_at_threshold']:.4f} | {res['external_s']:.1f} |")
    print("\nPer epoch (ends at: seconds from the contender's start to the end of that epoch's validation pass; "
          "img/s: (train + val images) / epoch seconds):\n")
    print("| contender | epoch | phase | ends at s | epoch s | img/s | val AUC |")
    print("|---|---|---|---|---|---|---|")
    for name, res in results.items():
        if "failed" in res:
            continue
        for row in collapse(res["history"]):
            print(f"| {LABELS[name]} | {row['epoch']} | {row['phase']} | {row['t']:.1f} | {row['seconds']:.1f} | "
                  f"{row['img_s']} | {row['val_auc']} |")
    for name, res in results.items():
        if "failed" not in res and res.get("notes"):
            print(f"- {LABELS[name]}: {res['notes']}")
    summary(results, scored)


def collapse(history: list[dict]) -> list[dict]:
    """Epochs on cached features (head only: milliseconds each) become one row; the others one row each."""
    rows, i = [], 0
    while i < len(history):
        h = history[i]
        if h.get("cached"):
            j = i
            while j + 1 < len(history) and history[j + 1].get("cached") and history[j + 1]["phase"] == h["phase"]:
                j += 1
            part = history[i:j + 1]
            rows.append({"epoch": f"{part[0]['epoch']}–{part[-1]['epoch']}", "phase": h["phase"], "t": part[-1]["t"],
                         "seconds": sum(x["seconds"] for x in part), "img_s": "— (cached features)",
                         "val_auc": f"{part[0]['val_auc']:.4f} → {part[-1]['val_auc']:.4f} "
                                    f"(max {max(x['val_auc'] for x in part):.4f})"})
            i = j + 1
        else:
            rows.append({"epoch": str(h["epoch"]), "phase": h["phase"], "t": h["t"], "seconds": h["seconds"],
                         "img_s": f"{h['images'] / h['seconds']:.1f}" if h.get("images") else "—",
                         "val_auc": f"{h['val_auc']:.4f}"})
            i += 1
    return rows


def summary(results, scored) -> None:
    inf, nan = float("inf"), float("nan")
    fa, ft, ff = (results.get(k) for k in ("fastai", "tl_finetune", "tl_features"))
    ok = lambda r: r is not None and "failed" not in r   # noqa: E731
    ft_ratio = feat_ratio = auc_delta = feat_delta = rss_ratio = nan
    lines = []
    if ok(fa) and ok(ft):
        target = fa["history"][-1]["val_auc"]
        t = time_to_reach(ft, target)
        ft_ratio = inf if t is None else t / fa["wall"]
        lines.append(f"- transferlab finetune reached fastai fine_tune's final validation AUC {target:.4f} "
                     + (f"after {t:.1f} s" if t is not None else "never")
                     + f"; fastai's wall time {fa['wall']:.1f} s (target ratio <= 0.7)")
        if "test" in scored["fastai"] and "test" in scored["tl_finetune"]:
            auc_delta = scored["tl_finetune"]["test"]["auc"] - scored["fastai"]["test"]["auc"]
        rss_ratio = ft["peak_rss_gb"] / fa["peak_rss_gb"]
    if ok(fa) and ok(ff):
        t_feat, t_fa = time_to_reach(ff, 0.99), time_to_reach(fa, 0.99)
        bound = t_fa is None
        t_fa = fa["wall"] if bound else t_fa
        feat_ratio = inf if t_feat is None else t_feat / t_fa
        lines.append("- transferlab features reached validation AUC 0.99 "
                     + (f"after {t_feat:.1f} s" if t_feat is not None else "never")
                     + "; fastai fine_tune " + (f"never did (its wall time {t_fa:.1f} s is used: the ratio is an "
                                                 f"upper bound)" if bound else f"after {t_fa:.1f} s")
                     + " (target ratio <= 0.2)")
        if "test" in scored["fastai"] and "test" in scored["tl_features"]:
            feat_delta = scored["tl_features"]["test"]["auc"] - scored["fastai"]["test"]["auc"]
    print()
    for line in lines:
        print(line)
    print(f"\nSUMMARY finetune_time_ratio_vs_fastai={_r(ft_ratio)} features_time_ratio_vs_fastai={_r(feat_ratio)} "
          f"auc_delta_vs_fastai={_r(auc_delta, 4, signed=True)} features_auc_delta_vs_fastai="
          f"{_r(feat_delta, 4, signed=True)} finetune_rss_ratio_vs_fastai={_r(rss_ratio)}")


def _r(x: float, digits: int = 2, signed: bool = False) -> str:
    if x != x:
        return "nan"
    if x == float("inf"):
        return "inf"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


# =============================================================================================== child process

def child(args) -> int:
    """Run one contender in this (fresh) process and write its measurements as JSON."""
    t_import = time.perf_counter()
    job = json.loads(Path(args.job).read_text())
    import torch

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    runner = {"fastai": run_fastai, "fastai_lr_find": run_fastai, "tl_features": run_transferlab,
              "tl_finetune": run_transferlab, "tl_lpft": run_transferlab, "tutorial": run_tutorial}[args.child]
    res = runner(args.child, job, t_import)
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    res.update(peak_rss_gb=me.ru_maxrss * 1024 / GB, children_peak_rss_gb=kids.ru_maxrss * 1024 / GB,
               cpu_s=me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime)
    Path(args.result).write_text(json.dumps(res, default=_jsonable))
    return 0


def _jsonable(x):
    import numpy as np

    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def _samples(job: dict, name: str):
    from transferlab.data.discover import Sample

    root = Path(job["data"])
    return [Sample(root / f, label, patient, name) for f, label, patient in job["splits"][name]]


# ---------------------------------------------------------------------------------------------------- fastai

def run_fastai(name: str, job: dict, t_import: float) -> dict:
    import numpy as np
    import pandas as pd
    import torch
    from fastai.callback.core import Callback
    from fastai.torch_core import apply_init, set_seed
    from fastai.vision.all import (ImageDataLoaders, Learner, Normalize, Resize, ResizeMethod, aug_transforms,
                                   create_head, default_split)
    from sklearn.metrics import roc_auc_score
    from transferlab import create_model
    from transferlab.runtime import seed_all

    import_s = time.perf_counter() - t_import
    classes, pos, size = job["classes"], job["pos"], job["image_size"]
    root = job["data"]
    n_train, n_val = len(job["splits"]["train"]), len(job["splits"]["val"])
    bs = min(job["fastai_bs"], n_train)

    class EpochLog(Callback):
        """Each epoch: seconds, the end of its validation pass (from t0) and validation AUC from its predictions."""
        order = 60   # after the Recorder (50)

        def __init__(self, t0: float, pos_index: int):
            self.t0, self.pos_index, self.rows, self.fits, self.last = t0, pos_index, [], 0, None

        def before_fit(self):
            self.fits += 1

        def before_epoch(self):
            self.t_epoch = time.perf_counter()

        def before_validate(self):
            self.val_p, self.val_y = [], []

        def after_batch(self):
            if not self.learn.training:
                self.val_p.append(self.learn.pred.detach().float().softmax(-1)[:, self.pos_index].cpu())
                self.val_y.append(self.learn.yb[0].detach().cpu())

        def after_epoch(self):
            p, y = torch.cat(self.val_p).numpy(), torch.cat(self.val_y).numpy()
            now = time.perf_counter()
            self.rows.append({"epoch": len(self.rows) + 1, "phase": "frozen" if self.fits == 1 else "unfrozen",
                              "t": now - self.t0, "seconds": now - self.t_epoch, "images": n_train + n_val,
                              "val_auc": float(roc_auc_score(y == self.pos_index, p))})
            self.last = (p, y)

    t0 = time.perf_counter()
    rows = [{"file": f, "label": classes[label], "is_valid": split == "val"}
            for split in ("train", "val") for f, label, _ in job["splits"][split]]
    set_seed(job["seed"])
    dls = ImageDataLoaders.from_df(
        pd.DataFrame(rows), path=root, fn_col="file", label_col="label", valid_col="is_valid",
        item_tfms=Resize(size, method=ResizeMethod.Squish),
        batch_tfms=[*aug_transforms(size=size), Normalize.from_stats(job["mean"], job["std"])], bs=bs)
    vocab = list(dls.vocab)
    fpos = vocab.index(classes[pos])
    seed_all(job["seed"])   # as transferlab's train(): seed, then create_model
    transfer = create_model(job["model"], len(classes))
    head = create_head(transfer.feature_dim, len(classes))   # vision_learner's head and init on a custom body
    apply_init(head, torch.nn.init.kaiming_normal_)
    model = torch.nn.Sequential(feature_map_body(transfer.backbone), head)
    learn = Learner(dls, model, splitter=default_split, path=Path(job["work"]) / f"fastai-{name}")
    learn.freeze()   # as vision_learner leaves a pretrained model
    if dls.device.type == "cuda":
        learn.to_fp16()   # fastai's mixed precision, as transferlab's 16-mixed default on CUDA
    log = EpochLog(t0, fpos)
    notes = [f"batch {bs}, {dls.train.fake_l.num_workers} DataLoader workers, device {dls.device}"
             + (" (to_fp16)" if dls.device.type == "cuda" else "")]
    with learn.no_bar():
        kwargs = {}
        if name == "fastai_lr_find":
            t_find = time.perf_counter()
            suggestion = learn.lr_find(num_it=job["lr_find_it"], show_plot=False)
            kwargs["base_lr"] = float(suggestion.valley)
            notes.append(f"lr_find ({job['lr_find_it']} iterations): valley {kwargs['base_lr']:.3g} in "
                         f"{time.perf_counter() - t_find:.1f} s")
        else:
            notes.append("base_lr 2e-3 (fine_tune's default)")
        learn.add_cb(log)
        learn.fine_tune(job["epochs"] - 1, **kwargs)
        learn.remove_cb(log)
        probs = {"val": {"p": log.last[0], "y": log.last[1]}}
        test = pd.DataFrame([{"file": f, "label": classes[label]} for f, label, _ in job["splits"]["test"]])
        if len(test):
            p, _ = learn.get_preds(dl=dls.test_dl(test))
            probs["test"] = {"p": p[:, fpos].numpy(), "y": [label for _, label, _ in job["splits"]["test"]]}
        wall = time.perf_counter() - t0
        external_s = 0.0
        if job["external"]:
            t = time.perf_counter()
            ext = pd.DataFrame([{"file": os.path.relpath(f, root), "label": classes[label]}
                                for f, label in job["external"]["files"]])
            p, _ = learn.get_preds(dl=dls.test_dl(ext))
            probs["external"] = {"p": p[:, fpos].numpy(), "y": [label for _, label in job["external"]["files"]]}
            external_s = time.perf_counter() - t
    # fastai's vocab order may differ from transferlab's class indices: labels stay transferlab's (pos = job's)
    probs["val"]["y"] = [classes.index(vocab[int(i)]) for i in np.asarray(probs["val"]["y"])]
    return {"wall": wall, "import_s": import_s, "history": log.rows, "probs": probs, "external_s": external_s,
            "epochs_desc": f"1 frozen + {job['epochs'] - 1}", "notes": "; ".join(notes)}


def feature_map_body(backbone):
    """The backbone up to its last feature map (what fastai's create_body keeps): its pooling and dropout unused."""
    import torch

    forward = getattr(backbone, "extract_features", None) or getattr(backbone, "forward_features", None)
    if forward is None:
        raise SystemExit(f"{type(backbone).__name__} has no extract_features/forward_features: fastai's head needs "
                         "the feature map")

    class _FeatureMap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone

        def forward(self, x):
            return forward(x)

    return _FeatureMap()


# ----------------------------------------------------------------------------------------------- transferlab

def run_transferlab(name: str, job: dict, t_import: float) -> dict:
    from transferlab import TrainConfig, predict, train
    from transferlab.engine import Classifier
    from transferlab.rundir import read_csv

    import_s = time.perf_counter() - t_import
    strategy = name.removeprefix("tl_")
    work = Path(job["work"])
    out, cache = work / name, work / f"cache-{name}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)   # cold: decoding and feature extraction count
    epochs = job["features_epochs"] if strategy == "features" else job["epochs"]
    cfg = TrainConfig(data=job["data"], model=job["model"], strategy=strategy, out=str(out), epochs=epochs,
                      max_images=job["max_images"], seed=job["seed"], image_size=job["image_size"],
                      cache_dir=str(cache), progress=False, threads=job["threads"])

    # history.csv has each epoch's val_auc and its own seconds (epoch start to validation end), not when it ended
    # counted from the start of the run (decoding, feature extraction, checkpoints lie between): stamp that here
    stamps = []
    original = Classifier.on_validation_epoch_end

    def stamped(module):
        before = len(module.history)
        original(module)
        if len(module.history) > before:
            stamps.append((time.perf_counter() - t0, dict(module.history[-1]), module.minibatch is not None))

    Classifier.on_validation_epoch_end = stamped
    t0 = time.perf_counter()
    try:
        run = train(cfg)
    finally:
        Classifier.on_validation_epoch_end = original
    wall = time.perf_counter() - t0
    metrics = run.read_metrics()
    classes = metrics["classes"]
    pos = classes.index(metrics["positive_class"])
    preds = read_csv(run.predictions)
    probs = {split: {"p": [float(r["prob_" + classes[pos]]) for r in preds if r["split"] == split],
                     "y": [classes.index(r["label"]) for r in preds if r["split"] == split]}
             for split in ("val", "test") if any(r["split"] == split for r in preds)}
    n_images = metrics["train"]["n"] + metrics["val"]["n"]
    history = [{"epoch": h["epoch"], "phase": h.get("phase") or strategy, "t": t, "seconds": h["seconds"],
                "val_auc": h["val_auc"], "cached": cached, "images": None if cached else n_images}
               for t, h, cached in stamps]
    external_s = 0.0
    if job["external"]:
        t = time.perf_counter()
        files = [f for f, _ in job["external"]["files"]]
        rows = {str(Path(r["file"]).resolve()): r for r in predict(run.path, files)}
        probs["external"] = {"p": [float(rows[str(Path(f).resolve())]["prob_" + classes[pos]]) for f in files],
                             "y": [label for _, label in job["external"]["files"]]}
        external_s = time.perf_counter() - t
    sec = metrics["seconds"]
    n_all = sum(metrics[s]["n"] for s in ("train", "val", "test") if s in metrics)
    notes = (f"decode {sec['decode']:.1f} s, prepare (feature extraction / datasets) {sec['prepare']:.1f} s "
             f"({n_all} images), fit {sec['fit']:.1f} s, evaluate {sec['evaluate']:.1f} s; best epoch "
             f"{metrics['best_epoch']} of {metrics['epochs_run']} (on {metrics['monitor']}); lr {cfg.lr}, batch "
             f"{cfg.batch_size}, BatchNorm {cfg.batchnorm}")
    if strategy == "features":
        notes += f"; one backbone pass: {n_all / max(sec['prepare'], 1e-9):.1f} img/s"
    run_epochs = metrics["epochs_run"]   # early stopping may end a run before its epochs
    desc = {"features": f"{run_epochs} head", "finetune": str(run_epochs),
            "lpft": f"{cfg.probe_epochs} head + {run_epochs - cfg.probe_epochs}"}[strategy]
    return {"wall": wall, "import_s": import_s, "history": history, "probs": probs, "external_s": external_s,
            "run": str(run.path), "epochs_desc": desc, "notes": notes}


# ---------------------------------------------------------------------------------------- the tutorial loop

def run_tutorial(name: str, job: dict, t_import: float) -> dict:
    sys.path.insert(0, str(HERE))
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    import transfer_speed as ts   # the tutorial loop, reused as it is (run_baseline)

    import_s = time.perf_counter() - t_import
    classes, pos = job["classes"], job["pos"]
    samples = {split: _samples(job, split) for split in ("train", "val", "test")}
    settings = argparse.Namespace(model=job["model"], weights="default", seed=job["seed"],
                                  baseline_recipe=job["baseline_recipe"], baseline_workers=job["baseline_workers"])
    batch = ts.TrainConfig(strategy="finetune").batch_size
    t0 = time.perf_counter()
    res = ts.run_baseline("finetune", settings, samples, len(classes), pos, epochs=job["epochs"], batch_size=batch,
                          image_size=job["image_size"], keep_model=True)
    model, val_tf = res["model"], res["val_transform"]

    @torch.inference_mode()
    def probabilities(items) -> np.ndarray:
        loader = DataLoader(ts.FileListDataset(items, val_tf), batch_size=batch, num_workers=job["baseline_workers"])
        return torch.cat([model(x).softmax(1)[:, pos] for x, _ in loader]).numpy()

    probs = {"val": {"p": res["val_prob"], "y": res["val_y"].tolist()}}
    if samples["test"]:
        probs["test"] = {"p": probabilities(samples["test"]), "y": [s.label for s in samples["test"]]}
    wall = time.perf_counter() - t0
    external_s = 0.0
    if job["external"]:
        from transferlab.data.discover import Sample

        t = time.perf_counter()
        items = [Sample(Path(f), label, "", "external") for f, label in job["external"]["files"]]
        probs["external"] = {"p": probabilities(items), "y": [s.label for s in items]}
        external_s = time.perf_counter() - t
    history = [{"epoch": h["epoch"], "phase": "finetune", "t": h["t"],
                "seconds": h["seconds"], "val_auc": h["val_auc"], "images": res["n_train"] + res["n_val"]}
               for h in res["history"]]
    notes = (f"recipe {job['baseline_recipe']}, batch {batch}, {job['baseline_workers']} DataLoader workers; best "
             f"epoch {res['best_epoch']} on validation loss (its weights scored)")
    return {"wall": wall, "import_s": import_s, "history": history, "probs": probs, "external_s": external_s,
            "epochs_desc": str(job["epochs"]), "notes": notes}


if __name__ == "__main__":
    sys.exit(main())
