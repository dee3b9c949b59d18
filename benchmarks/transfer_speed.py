#!/usr/bin/env python
"""transferlab vs the torchvision transfer-learning tutorial: same process, data subset, model, epochs, batch size, seed.

    python benchmarks/transfer_speed.py --data ../shared/data/chest_xray --model resnet18 --weights none --epochs 10

Runs, in this order:
  0. (--profile) torch.profiler operator tables: backbone forward (eager / transferlab's) and one finetune step
  1. the tutorial baseline as a fixed feature extractor: ImageFolder-style dataset of the same files, PIL decode +
     transforms every epoch in a DataLoader, requires_grad=False on the backbone, the whole model run forward every
     epoch in a plain loop (model.train() / model.eval() per phase, as in the tutorial)
  2. the tutorial baseline fine-tuning the whole network. The baselines run first, so that they see glibc's
     allocator exactly as a fresh process has it (transferlab changes its settings while a run lasts)
  3. the lower bound of `features`: one plain eager forward pass of the backbone over the same images (eval mode,
     torch.inference_mode, the faster of the two memory formats, transferlab's allocator setting; normalisation
     not timed); measured before and after step 4, the faster of the two is used
  4. transferlab `features` through the real API (transferlab.training.train), cold: a fresh cache dir and no
     in-memory caches, so its time includes decoding every image and computing every feature
  5. transferlab `finetune` (real API), same epochs as the baseline
  6. peak memory of a full `transferlab train --strategy features` run on every image, in a child process
  7. (--probes) single overheads: feature-cache key hashing, import time, Lightning per-step overhead,
     channels_last, DataLoader workers, threads, augmentation throughput, fused vs eager forward,
     glibc's default allocator vs reuse_freed_memory
and prints wall time per phase, images/s, peak memory and validation accuracy/AUC of each, the transferlab/baseline
ratios, and finally one line:
  SUMMARY features_speedup=<x> finetune_epoch_speedup=<y> features_vs_lower_bound=<z> peak_rss_gb=<m>
features_speedup: baseline / transferlab wall time of the whole features run (same process, in-process API call).
finetune_epoch_speedup: baseline / transferlab epoch time after the first epoch, the fastest later epoch of each
(the least disturbed by other jobs on a shared machine; the mean is printed too).
features_vs_lower_bound: transferlab's whole features run / the lower bound. peak_rss_gb: the full run (step 6).

Baseline recipe (--baseline-recipe): "ours" (default) gives the baseline transferlab's recipe - the same X-ray
augmentation (RandomAffine + ColorJitter, applied to PIL images), AdamW + cosine schedule, learning rates, weight
decay and class-weighted loss - so that only the engineering differs; "tutorial" uses the tutorial's own
RandomResizedCrop + horizontal flip, Resize(256)/CenterCrop(224) for evaluation, SGD(momentum=0.9) + StepLR(7, 0.1)
and an unweighted loss. Both pick their best epoch on validation loss, as transferlab does by default.
Validation split: transferlab's own patient-disjoint split (same seed), so both sides see exactly the same files.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

T_IMPORT = time.perf_counter()
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms as T  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from transferlab import engine, runtime  # noqa: E402
from transferlab.config import TrainConfig  # noqa: E402
from transferlab.data import images as tl_images  # noqa: E402
from transferlab.data.discover import discover  # noqa: E402
from transferlab.data.split import make_splits  # noqa: E402
from transferlab.data.transforms import ImageTensorDataset, normalize, basic_augment  # noqa: E402
from transferlab.evaluation import positive_index  # noqa: E402
from transferlab.loaders import class_weights_for  # noqa: E402
from transferlab.metrics import choose_threshold  # noqa: E402
from transferlab.models.heads import create_model  # noqa: E402
from transferlab.models.registry import get_spec  # noqa: E402
from transferlab.rundir import read_csv  # noqa: E402
from transferlab.runtime import seed_all  # noqa: E402
from transferlab.strategies import _digest, inference_backbone  # noqa: E402
from transferlab.training import _subsample, train  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - T_IMPORT
GB = 2**30


# --------------------------------------------------------------------------------------------- measuring tools

class PeakRSS:
    """Peak resident memory of this process inside a `with` block, sampled every 10 ms from /proc/self/statm."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def gb(self) -> float:
        return self.peak / GB


class EpochClock:
    """Wall-clock epoch boundaries of transferlab's Lightning fit, read by wrapping Classifier's epoch hooks (the
    wrappers only record time.perf_counter(); behaviour is unchanged). Epoch i = start(i) .. start(i+1), the
    last one ends at on_train_end: each includes training, validation and checkpointing."""

    def __init__(self):
        self.starts: list[float] = []
        self.end: float | None = None

    def __enter__(self):
        cls = engine.Classifier
        self._saved = (cls.on_train_epoch_start, cls.on_train_end)
        start, end = self._saved
        clock = self

        def on_train_epoch_start(module):
            clock.starts.append(time.perf_counter())
            return start(module)

        def on_train_end(module):
            clock.end = time.perf_counter()
            return end(module)

        cls.on_train_epoch_start, cls.on_train_end = on_train_epoch_start, on_train_end
        return self

    def __exit__(self, *exc):
        engine.Classifier.on_train_epoch_start, engine.Classifier.on_train_end = self._saved

    def epochs(self) -> list[float]:
        bounds = self.starts + ([self.end] if self.end else [])
        return [b - a for a, b in zip(bounds, bounds[1:])]


def uptime() -> str:
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
        return f"load average {' '.join(load)} on {os.cpu_count()} cores"
    except OSError:
        return "load average unknown"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def clear_memory_caches() -> None:
    """transferlab keeps recent decoded images in memory; a cold run starts without them."""
    tl_images._RECENT.clear()


def cached_features(cache: Path) -> list[torch.Tensor]:
    """The backbone outputs a `features` run left in its disk cache, in the order they were written (train, val)."""
    files = sorted((cache / "features").glob("*.npy"), key=lambda f: f.stat().st_mtime)
    return [torch.from_numpy(np.load(f)) for f in files]


def val_scores(labels: np.ndarray, prob_pos: np.ndarray, pos: int) -> dict:
    y = (labels == pos).astype(int)
    threshold = choose_threshold(y, prob_pos, "youden")
    return {"acc_at_0.5": float(((prob_pos >= 0.5) == y).mean()), "auc": float(roc_auc_score(y, prob_pos)),
            "acc_at_youden": float(((prob_pos >= threshold) == y).mean()), "youden_threshold": float(threshold)}


# ------------------------------------------------------------------------------------------------ the samples

NO_TEST = 0.0   # both sides train and validate on the same images; no carved test split to extract or score


def subset(args, max_images: int | None):
    """transferlab's own patient-disjoint split and class-stratified subset (what train() will use)."""
    cfg = TrainConfig(data=args.data, model=args.model, strategy="features", seed=args.seed, max_images=max_images,
                      test_fraction=NO_TEST)
    index = discover(cfg.data, patient_pattern=cfg.patient_pattern, manifest=cfg.manifest)
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    splits = make_splits(index, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                         seed=split_seed, official_val=cfg.official_val)
    return index, {name: _subsample(getattr(splits, name), max_images, split_seed) for name in ("train", "val")}


def check_same_files(run_path: Path, index, samples) -> None:
    rows = read_csv(Path(run_path) / "splits.csv")
    for name in ("train", "val"):
        ours = sorted(r["file"] for r in rows if r["split"] == name)
        mine = sorted(str(s.path.relative_to(index.root)) for s in samples[name])
        if ours != mine:
            raise SystemExit(f"the benchmark's {name} files differ from transferlab's ({len(mine)} vs {len(ours)})")


# ------------------------------------------------------------------------------------- transferlab, real API

def run_transferlab(strategy: str, args, work: Path, *, epochs: int, batch_size: int, max_images: int | None,
                    pos: int, precision: str = "auto") -> dict:
    clear_memory_caches()
    out, cache = work / f"tl-{strategy}", work / f"cache-{strategy}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    cfg = TrainConfig(data=args.data, model=args.model, weights=args.weights, strategy=strategy, out=str(out),
                      epochs=epochs, batch_size=batch_size, patience=epochs, seed=args.seed, max_images=max_images,
                      test_fraction=NO_TEST, cache_dir=str(cache), progress=False, precision=precision)
    with PeakRSS() as mem, EpochClock() as clock:
        start = time.perf_counter()
        run = train(cfg)
        wall = time.perf_counter() - start
    metrics = run.read_metrics()
    sec = metrics["seconds"]
    preds = [r for r in read_csv(run.predictions) if r["split"] == "val"]
    classes = metrics["classes"]
    prob = np.array([float(r["prob_" + classes[pos]]) for r in preds])
    labels = np.array([classes.index(r["label"]) for r in preds])
    history = read_csv(run.history)
    return {"wall": wall, "peak_gb": mem.gb, "run": str(run.path),
            "phases": {"decode/cache": sec["decode"], "feature extraction" if strategy == "features" else "datasets":
                       sec["prepare"], "training (fit)": sec["fit"], "evaluation": sec["evaluate"],
                       "other (model build, run dir)": wall - sec["decode"] - sec["prepare"] - sec["fit"] - sec["evaluate"]},
            "epochs": clock.epochs(), "history_seconds": [float(h["seconds"]) for h in history],
            "val": val_scores(labels, prob, pos), "val_acc_at_run_threshold": metrics["val"]["accuracy"],
            "n_train": metrics["train"]["n"], "n_val": metrics["val"]["n"]}


# -------------------------------------------------------------------------------- the tutorial-style baseline

def pil_loader(path) -> Image.Image:
    """torchvision.datasets.folder.pil_loader: what ImageFolder does for every image, every epoch."""
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


class FileListDataset(Dataset):
    """ImageFolder with the file list given (transferlab's split), decoding and transforming on every access."""

    def __init__(self, samples, transform):
        self.samples = [(str(s.path), s.label) for s in samples]
        self.transform = transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.transform(pil_loader(path)), label


def baseline_transforms(recipe: str, size: int, mean, std):
    norm = [T.ToTensor(), T.Normalize(mean, std)]
    if recipe == "tutorial":
        return (T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *norm]),
                T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), *norm]))
    # transferlab's augmentation (same parameters as transferlab.data.transforms.basic_augment), on PIL images
    return (T.Compose([T.Resize((size, size)), v2.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.9, 1.1)),
                       v2.ColorJitter(brightness=0.2, contrast=0.2), *norm]),
            T.Compose([T.Resize((size, size)), *norm]))


def run_baseline(mode: str, args, samples, n_classes: int, pos: int, *, epochs: int, batch_size: int,
                 image_size: int | None = None, keep_model: bool = False) -> dict:
    """The torchvision tutorial's train_model loop; mode 'features' (frozen backbone) or 'finetune'.

    image_size: of the transforms (default: the model's input size). The result's `history` has one row per
    epoch: its validation loss and AUC and `t`, the seconds from the call's start to the end of that epoch.
    keep_model: as the tutorial, the best epoch's weights (on validation loss) are kept and loaded at the end; the
    result then also holds `model`, `val_transform` and that epoch's validation probabilities (`val_prob`, `val_y`)
    for scoring other images (benchmarks/peers.py)."""
    spec = get_spec(args.model)
    size = image_size or spec.input_size
    start = time.perf_counter()
    seed_all(args.seed)   # the same initialisation as transferlab's train(): seed_all, then create_model
    model = create_model(args.model, n_classes, weights=args.weights)
    train_tf, val_tf = baseline_transforms(args.baseline_recipe, size, spec.mean, spec.std)
    loaders = {
        "train": DataLoader(FileListDataset(samples["train"], train_tf), batch_size=batch_size, shuffle=True,
                            num_workers=args.baseline_workers),
        "val": DataLoader(FileListDataset(samples["val"], val_tf), batch_size=batch_size, shuffle=False,
                          num_workers=args.baseline_workers),
    }
    train_labels = np.array([s.label for s in samples["train"]])
    lr = TrainConfig(strategy=mode).lr
    if mode == "features":
        for p in model.backbone.parameters():
            p.requires_grad = False
        groups = [{"params": model.head.parameters(), "lr": lr}]
    else:
        groups = [{"params": model.backbone.parameters(), "lr": lr * TrainConfig().backbone_lr_factor},
                  {"params": model.head.parameters(), "lr": lr}]
    if args.baseline_recipe == "tutorial":
        criterion = torch.nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(groups, lr=0.001, momentum=0.9)
        for g in optimizer.param_groups:
            g["lr"] = 0.001
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    else:
        criterion = torch.nn.CrossEntropyLoss(weight=class_weights_for(train_labels, n_classes))
        optimizer = torch.optim.AdamW(groups, weight_decay=TrainConfig().weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    build = time.perf_counter() - start

    phases = dict.fromkeys(["decode + transforms (data wait)", "backbone forward", "head / train step",
                            "evaluation (val forward + metrics)"], 0.0)
    epoch_times, best, history, best_state = [], None, [], None
    with PeakRSS() as mem:
        for epoch in range(epochs):
            t_epoch = time.perf_counter()
            for phase in ("train", "val"):
                model.train() if phase == "train" else model.eval()
                probs, ys, loss_sum = [], [], 0.0
                t_wait = time.perf_counter()
                for inputs, labels in loaders[phase]:
                    t0 = time.perf_counter()
                    phases["decode + transforms (data wait)"] += t0 - t_wait
                    optimizer.zero_grad()
                    with torch.set_grad_enabled(phase == "train"):
                        if mode == "features":
                            feats = model.backbone(inputs)
                            t1 = time.perf_counter()
                            phases["backbone forward"] += t1 - t0
                            outputs = model.head(feats)
                        else:
                            outputs = model(inputs)
                            t1 = t0
                        loss = criterion(outputs, labels)
                        if phase == "train":
                            loss.backward()
                            optimizer.step()
                    t2 = time.perf_counter()
                    if phase == "train":
                        phases["head / train step"] += t2 - t1
                    else:
                        phases["evaluation (val forward + metrics)"] += t2 - t1
                        probs.append(outputs.detach().softmax(1)[:, pos])
                        ys.append(labels)
                        loss_sum += loss.item() * len(labels)
                    t_wait = time.perf_counter()
                if phase == "train":
                    scheduler.step()
                else:
                    t0 = time.perf_counter()
                    prob, y = torch.cat(probs).numpy(), torch.cat(ys).numpy()
                    val_loss = loss_sum / len(y)
                    if best is None or val_loss < best[0]:
                        best = (val_loss, epoch + 1, prob, y)
                        if keep_model:
                            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    history.append({"epoch": epoch + 1, "val_loss": val_loss,
                                    "val_auc": float(roc_auc_score((y == pos).astype(int), prob))
                                    if len(np.unique(y)) > 1 else float("nan")})
                    phases["evaluation (val forward + metrics)"] += time.perf_counter() - t0
            epoch_times.append(time.perf_counter() - t_epoch)
            history[-1].update(t=time.perf_counter() - start, seconds=epoch_times[-1])
    wall = time.perf_counter() - start
    phases["other (model build)"] = wall - sum(phases.values())
    result = {"wall": wall, "build": build, "peak_gb": mem.gb, "phases": phases, "epochs": epoch_times,
              "best_epoch": best[1], "val": val_scores(best[3], best[2], pos), "history": history,
              "n_train": len(samples["train"]), "n_val": len(samples["val"])}
    if keep_model:
        model.load_state_dict(best_state)
        result.update(model=model.eval(), val_transform=val_tf, val_prob=best[2], val_y=best[3])
    return result


# ------------------------------------------------------------------------------------------- the lower bound

def lower_bound(args, pixels: list[np.ndarray], n_classes: int, batch_size: int) -> dict:
    """Time of one plain eager forward pass of the backbone over `pixels` (eval mode, inference_mode), in the
    faster of the two memory formats (chosen on two warm batches each), with glibc keeping freed memory for
    reuse as transferlab's runs do (runtime.reuse_freed_memory); normalisation is not timed."""
    spec = get_spec(args.model)
    seed_all(args.seed)
    backbone = create_model(args.model, n_classes, weights=args.weights).backbone.eval().requires_grad_(False)
    channels = max(p.shape[1] for p in pixels)
    images = torch.from_numpy(np.concatenate([np.repeat(p, channels // p.shape[1], axis=1) for p in pixels]))
    batches = [normalize(images[i:i + batch_size], spec.mean, spec.std) for i in range(0, min(len(images), 3 * batch_size), batch_size)]
    probe = {}
    with torch.inference_mode(), runtime.reuse_freed_memory():
        for fmt in (torch.contiguous_format, torch.channels_last):
            backbone.to(memory_format=fmt)
            backbone(batches[0].contiguous(memory_format=fmt))   # warm-up
            t = time.perf_counter()
            n = 0
            for x in batches[1:] or batches:
                backbone(x.contiguous(memory_format=fmt))
                n += len(x)
            probe[str(fmt).split(".")[-1]] = n / (time.perf_counter() - t)
        fmt = torch.channels_last if probe["channels_last"] >= probe["contiguous_format"] else torch.contiguous_format
        backbone.to(memory_format=fmt)
        seconds = 0.0
        for i in range(0, len(images), batch_size):
            x = normalize(images[i:i + batch_size], spec.mean, spec.std).contiguous(memory_format=fmt)
            t = time.perf_counter()
            backbone(x)
            seconds += time.perf_counter() - t
    return {"seconds": seconds, "images": len(images), "format": str(fmt).split(".")[-1], "format_probe_img_s": probe}


# ------------------------------------------------------------------------------------------- peak memory, full

_TRAMPOLINE = (
    "import json, resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:]).returncode\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print('CHILD_RUSAGE ' + json.dumps({'maxrss_kb': u.ru_maxrss, 'user_s': u.ru_utime, 'sys_s': u.ru_stime}), flush=True)\n"
    "sys.exit(rc)\n")


def full_features_run(args, work: Path) -> dict:
    """`transferlab train --strategy features` on every image in a child process; the OS's peak RSS of the child."""
    exe = Path(sys.executable).with_name("transferlab")
    out, cache = work / "full-features", work / "cache-full"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "transferlab"]),
           "train", "--data", args.data, "--model", args.model, "--weights", args.weights, "--strategy", "features",
           "--epochs", str(args.epochs), "--patience", str(args.epochs), "--seed", str(args.seed),
           "--out", str(out), "--cache-dir", str(cache), "--no-progress"]
    log = work / "full-features.log"
    # Linux carries a process's peak RSS across fork + exec, so a child forked from this (big) process would report
    # at least our own RSS. A small trampoline process starts the run and reports its child's peak instead.
    with open(log, "w") as f:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _TRAMPOLINE, *cmd], stdout=f, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
    text = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"full features run failed ({proc.returncode}); see {log}:\n{text[-2000:]}")
    usage = json.loads(text.strip().splitlines()[-1].removeprefix("CHILD_RUSAGE "))
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall": wall, "peak_gb": usage["maxrss_kb"] * 1024 / GB, "user_s": usage["user_s"], "sys_s": usage["sys_s"],
            "seconds": metrics["seconds"], "n_train": metrics["train"]["n"], "n_val": metrics["val"]["n"],
            "val_auc": metrics["val"]["roc_auc"], "command": " ".join(cmd), "cache": str(cache)}


# ------------------------------------------------------------------------------------------------------ probes

def timed(fn, repeat: int = 1) -> float:
    best = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best.append(time.perf_counter() - t)
    return statistics.median(best)


def probes(args, results: dict, n_classes: int) -> dict:
    spec = get_spec(args.model)
    size = spec.input_size
    out: dict = {}
    env = dict(os.environ)

    # process start-up / import
    def import_time(stmt):
        runs = []
        for _ in range(2):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", stmt], check=True, env=env, capture_output=True)
            runs.append(time.perf_counter() - t)
        return statistics.median(runs)
    out["import_s"] = {stmt: import_time(stmt) for stmt in
                       ("import torch", "import transferlab.training")}

    # feature cache key (_digest) on every training image (decoded images from the full run's disk cache)
    full = results.get("full_features")
    if full:
        index, every = subset(args, None)
        seed_all(args.seed)
        model = create_model(args.model, n_classes, weights=args.weights)
        t = mb = n = 0
        for name in ("train", "val"):   # a run hashes each split once
            px = tl_images.load_images([s.path for s in every[name]], size, cache_dir=Path(full["cache"]) / "images",
                                       progress=False).pixels
            t += timed(lambda: _digest(px, model.backbone))
            mb += px.nbytes / 2**20
            n += len(px)
            del px
        out["digest"] = {"images": n, "seconds": t, "mb": mb, "share_of_full_run": t / full["wall"]}

    # Lightning's overhead for the head on cached features: the same steps in a plain loop
    feats = getattr(args, "_features", None)
    tl = results.get("tl_features")
    if tl and feats and len(feats) == 2:
        ftr, fval = feats
        ytr, yval = (torch.as_tensor(a) for a in args._feature_labels)
        seed_all(args.seed)
        head = torch.nn.Linear(ftr.shape[1], n_classes)
        opt = torch.optim.AdamW(head.parameters(), lr=TrainConfig().lr or 1e-3, weight_decay=1e-4)
        w = class_weights_for(ytr.numpy(), n_classes)
        bs = results["features_batch_size"]

        def plain():
            for _ in range(args.epochs):
                for idx in torch.randperm(len(ftr)).split(bs):
                    loss = F.cross_entropy(head(ftr[idx]), ytr[idx], weight=w)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                with torch.inference_mode():
                    F.cross_entropy(head(fval), yval, weight=w)
        steps = args.epochs * -(-len(ftr) // bs)
        t = timed(plain)
        out["head_training"] = {"plain_loop_s": t, "lightning_fit_s": tl["phases"]["training (fit)"], "steps": steps,
                                "lightning_ms_per_step": 1000 * tl["phases"]["training (fit)"] / steps,
                                "plain_ms_per_step": 1000 * t / steps}

    # finetune training step: channels_last on/off (forward + backward + AdamW, batch of the finetune batch size)
    fbs = results["finetune_batch_size"]
    seed_all(args.seed)
    model = create_model(args.model, n_classes, weights=args.weights).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(fbs, 3, size, size)
    y = torch.randint(0, n_classes, (fbs,))

    def step(fmt):
        model.to(memory_format=fmt)
        loss = F.cross_entropy(model(x.contiguous(memory_format=fmt)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    step_times = {"contiguous": [], "channels_last": []}
    for fmt in (torch.contiguous_format, torch.channels_last):
        step(fmt)   # warm-up
    for _ in range(args.probe_repeats):
        for name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
            step_times[name].append(timed(lambda: step(fmt)))
    out["finetune_step_img_s"] = {k: fbs / statistics.median(v) for k, v in step_times.items()}

    # glibc's allocator as set by default (big tensors mmapped and unmapped every time) vs runtime.reuse_freed_memory:
    # img/s and the kernel (sys) CPU time, of the channels_last finetune step and of the eager eval forward
    def with_allocator(fn, n_images):
        fn()   # warm-up
        before_sys, start = resource.getrusage(resource.RUSAGE_SELF).ru_stime, time.perf_counter()
        for _ in range(args.probe_repeats):
            fn()
        wall = time.perf_counter() - start
        return {"img_s": n_images * args.probe_repeats / wall,
                "sys_share": (resource.getrusage(resource.RUSAGE_SELF).ru_stime - before_sys) / wall}
    allocator = {}
    for setting in ("glibc default", "reuse_freed_memory"):
        with runtime.reuse_freed_memory(enabled=setting == "reuse_freed_memory"):
            model.train()
            allocator[f"finetune step, {setting}"] = with_allocator(lambda: step(torch.channels_last), fbs)
            model.eval()
            with torch.inference_mode():
                allocator[f"eval forward, {setting}"] = with_allocator(
                    lambda: model(x.contiguous(memory_format=torch.channels_last)), fbs)
    out["allocator"] = allocator

    # inference: eager vs transferlab's inference_backbone, and threads 1 vs 2
    model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    xb = torch.randn(results["features_batch_size"], 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fused = inference_backbone(model.backbone, xb[:2])
        fused(xb)
        model.backbone(xb)
        runs = {"eager channels_last": [], "transferlab inference_backbone": []}
        for _ in range(args.probe_repeats):
            runs["eager channels_last"].append(timed(lambda: model.backbone(xb)))
            runs["transferlab inference_backbone"].append(timed(lambda: fused(xb)))
        out["inference_img_s"] = {k: len(xb) / statistics.median(v) for k, v in runs.items()}
        out["inference_backbone_used"] = fused is not model.backbone
        threads = torch.get_num_threads()
        per_thread = {}
        for n in sorted({1, threads}):
            torch.set_num_threads(n)
            fused(xb)
            per_thread[n] = len(xb) / statistics.median([timed(lambda: fused(xb)) for _ in range(args.probe_repeats)])
        torch.set_num_threads(threads)
        out["threads_img_s"] = per_thread

    # augmentation + normalisation for finetune (torchvision v2, image by image), DataLoader workers 0 / 2
    n_aug = min(256, max(fbs, 64))
    pix = np.random.default_rng(0).integers(0, 256, (n_aug, 1, size, size), dtype=np.uint8)
    ds = ImageTensorDataset(pix, [0] * n_aug, mean=spec.mean, std=spec.std, augment=basic_augment(size))
    aug = {}
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=fbs, shuffle=True, num_workers=workers)
        aug[f"num_workers={workers}"] = n_aug / timed(lambda: [b for b in loader])
    out["augment_img_s"] = aug
    return out


def profile_ops(args, n_classes: int, batch: int, top: int = 8) -> dict:
    """torch.profiler: the top operators by self CPU time of one backbone forward (eager and transferlab's
    inference_backbone, channels_last, inference_mode) and of one finetune training step (channels_last)."""
    from torch.profiler import ProfilerActivity, profile

    size = get_spec(args.model).input_size
    seed_all(args.seed)
    model = create_model(args.model, n_classes, weights=args.weights).eval().to(memory_format=torch.channels_last)
    model.backbone.requires_grad_(False)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    out = {}

    def table(fn):
        fn()   # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) or 1
        return {"total_s": total / 1e6, "ops": [(e.key, e.count, e.self_cpu_time_total / 1e6, e.self_cpu_time_total / total)
                                                for e in events[:top]]}
    with torch.inference_mode():
        fused = inference_backbone(model.backbone, x[:1])
        out["eager forward (features lower bound)"] = table(lambda: model.backbone(x))
        out["inference_backbone forward (transferlab features)"] = table(lambda: fused(x))
    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    y = torch.randint(0, n_classes, (batch,))

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out["finetune train step (forward + backward + AdamW)"] = table(step)
    return out


# -------------------------------------------------------------------------------------------------- reporting

def fmt_s(x):
    return "-" if x is None else f"{x:8.1f}s"


def ratio(a, b):
    return None if not a or not b else b / a


def print_phases(title, base: dict | None, ours: dict | None):
    print(f"\n### {title}")
    rows = []
    if base:
        rows += [("baseline: " + k, v) for k, v in base["phases"].items()] + [("baseline: TOTAL", base["wall"])]
    if ours:
        rows += [("transferlab: " + k, v) for k, v in ours["phases"].items()] + [("transferlab: TOTAL", ours["wall"])]
    for name, v in rows:
        print(f"  {name:<52} {v:9.1f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder (e.g. ../shared/data/chest_xray)")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--weights", default="default", help="'default' (ImageNet) or 'none'; torchvision weights are not "
                                                        "downloadable offline: use --weights none there (same timing)")
    p.add_argument("--epochs", type=int, default=10, help="features: epochs of both sides")
    p.add_argument("--finetune-epochs", type=int, default=3, help="finetune: epochs of both sides (>= 2: the "
                                                                  "comparison is on epochs after the first)")
    p.add_argument("--batch-size", type=int, help="batch size of both sides (default: transferlab's per-strategy "
                                                  "default, features 64 / finetune 32)")
    p.add_argument("--max-images", type=int, default=1000, help="at most this many images per split, train and val "
                                                                "(0 = all)")
    p.add_argument("--finetune-max-images", type=int, help="finetune subset (default: --max-images)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline-recipe", choices=("ours", "tutorial"), default="ours")
    p.add_argument("--baseline-workers", type=int, default=2, help="baseline DataLoader workers (tutorial: 4; this "
                                                                   "machine has 2 cores)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads for the whole benchmark (default: torch's)")
    p.add_argument("--skip-features", action="store_true")
    p.add_argument("--skip-baseline-features", action="store_true")
    p.add_argument("--skip-finetune", action="store_true")
    p.add_argument("--skip-baseline-finetune", action="store_true")
    p.add_argument("--skip-memory", action="store_true", help="skip the full-data peak-memory child run")
    p.add_argument("--finetune-precision", default="auto", help="transferlab finetune precision (auto = 32-true on CPU)")
    p.add_argument("--probes", action="store_true", help="also measure single overheads (see the docstring)")
    p.add_argument("--probe-repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="torch.profiler operator tables of a forward pass and a "
                                                          "finetune step (batch of --profile-batch images)")
    p.add_argument("--profile-batch", type=int, default=32)
    p.add_argument("--work-dir", help="where runs and caches go (default: a temporary folder, removed at the end)")
    p.add_argument("--json", help="also write every measurement to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    max_images = args.max_images or None
    ft_max = (args.finetune_max_images if args.finetune_max_images is not None else args.max_images) or None
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="transfer_speed-"))
    work.mkdir(parents=True, exist_ok=True)

    spec = get_spec(args.model)
    fbs = args.batch_size or TrainConfig(strategy="features").batch_size
    tbs = args.batch_size or TrainConfig(strategy="finetune").batch_size
    index, samples = subset(args, max_images)
    classes = index.classes
    pos = positive_index(classes)
    results = {"features_batch_size": fbs, "finetune_batch_size": tbs}
    env = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "python": platform.python_version(), "load_start": uptime()}
    print(f"# transfer_speed: model={args.model} weights={args.weights} data={args.data}")
    print(f"# machine: {env['cpu']}, {env['cores']} cores, torch {env['torch']} ({env['threads']} threads); "
          f"{env['load_start']} at start")
    print(f"# features: {len(samples['train'])} train + {len(samples['val'])} val images (max-images={args.max_images}), "
          f"{args.epochs} epochs, batch {fbs}; baseline recipe={args.baseline_recipe}, "
          f"baseline workers={args.baseline_workers}; seed {args.seed}; benchmark imports took {IMPORT_SECONDS:.1f} s")

    if args.profile:   # first, in a fresh process state
        print("\n... profile", flush=True)
        results["profile"] = profile_ops(args, len(classes), args.profile_batch)

    # The baselines run first, in this fresh process: glibc's allocator exactly as a tutorial user has it
    # (transferlab's runs change its settings while they last; runtime.reuse_freed_memory).
    ft_index, ft_samples = subset(args, ft_max) if ft_max != max_images else (index, samples)
    if not (args.skip_features or args.skip_baseline_features):
        print("\n... baseline features", flush=True)
        results["base_features"] = run_baseline("features", args, samples, len(classes), pos, epochs=args.epochs,
                                                batch_size=fbs)
        print(f"    {results['base_features']['wall']:.1f} s", flush=True)
    if not (args.skip_finetune or args.skip_baseline_finetune):
        print(f"\n... baseline finetune ({len(ft_samples['train'])} train + {len(ft_samples['val'])} val, "
              f"{args.finetune_epochs} epochs, batch {tbs})", flush=True)
        results["base_finetune"] = run_baseline("finetune", args, ft_samples, len(classes), pos,
                                                epochs=args.finetune_epochs, batch_size=tbs)
        print(f"    {results['base_finetune']['wall']:.1f} s, epochs "
              f"{[round(e, 1) for e in results['base_finetune']['epochs']]}", flush=True)

    if not args.skip_features:
        print("\n... lower bound before: one forward pass", flush=True)
        clear_memory_caches()
        pixels = [tl_images.load_images([s.path for s in samples[n]], spec.input_size, progress=False).pixels
                  for n in ("train", "val")]   # decoded in memory only (no cache dir): transferlab's run stays cold
        before = lower_bound(args, pixels, len(classes), fbs)
        print(f"    {before['seconds']:.1f} s", flush=True)
        print("... transferlab features", flush=True)
        tl = results["tl_features"] = run_transferlab("features", args, work, epochs=args.epochs, batch_size=fbs,
                                                      max_images=max_images, pos=pos)
        check_same_files(Path(tl["run"]), index, samples)
        args._feature_labels = (np.array([s.label for s in samples["train"]]), np.array([s.label for s in samples["val"]]))
        args._features = cached_features(work / "cache-features")   # train, val: for the Lightning-overhead probe
        print(f"    {tl['wall']:.1f} s", flush=True)
        print("... lower bound after: one forward pass", flush=True)
        after = lower_bound(args, pixels, len(classes), fbs)
        del pixels
        print(f"    {after['seconds']:.1f} s", flush=True)
        # the faster of the two passes (before / after transferlab's run): the stricter bound on a shared machine
        results["lower_bound"] = dict(min(before, after, key=lambda b: b["seconds"]),
                                      before_s=before["seconds"], after_s=after["seconds"])

    if not args.skip_finetune:
        print(f"\n... transferlab finetune ({len(ft_samples['train'])} train + {len(ft_samples['val'])} val, "
              f"{args.finetune_epochs} epochs, batch {tbs})", flush=True)
        tf = results["tl_finetune"] = run_transferlab("finetune", args, work, epochs=args.finetune_epochs,
                                                      batch_size=tbs, max_images=ft_max, pos=pos,
                                                      precision=args.finetune_precision)
        check_same_files(Path(tf["run"]), ft_index, ft_samples)
        print(f"    {tf['wall']:.1f} s, epochs {[round(e, 1) for e in tf['epochs']]}", flush=True)

    if not args.skip_memory:
        print("\n... full features run on every image (child process, peak RSS)", flush=True)
        results["full_features"] = full_features_run(args, work)
        print(f"    {results['full_features']['wall']:.1f} s", flush=True)

    if args.probes:
        print("\n... probes", flush=True)
        results["probes"] = probes(args, results, len(classes))
    env["load_end"] = uptime()
    results["env"] = env
    report(args, results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(args, r: dict) -> None:
    env = r["env"]
    print("\n" + "=" * 100)
    print(f"## {args.model} (weights={args.weights}) on {env['cpu']}, {env['cores']} cores, torch {env['torch']}, "
          f"{env['threads']} threads")
    print(f"## load: {env['load_start']} at start, {env['load_end']} at end")
    tl, base, lb = r.get("tl_features"), r.get("base_features"), r.get("lower_bound")
    features_speedup = lower_ratio = finetune_speedup = None
    if tl:
        n_img = tl["n_train"] + tl["n_val"]
        print_phases(f"features: {tl['n_train']} train + {tl['n_val']} val images, {args.epochs} epochs, "
                     f"batch {r['features_batch_size']}", base, tl)
        label = f"lower bound: one eager forward pass ({lb['format']}, {lb['images']} images)"
        print(f"  {label:<52} {lb['seconds']:9.1f} s  (faster of before {lb['before_s']:.1f} s / after "
              f"{lb['after_s']:.1f} s)")
        print(f"  {'  (format probe, img/s)':<52} " + ", ".join(f"{k} {v:.1f}" for k, v in lb["format_probe_img_s"].items()))
        lower_ratio = tl["wall"] / lb["seconds"]
        print(f"  {'transferlab feature pass / lower bound':<52} {tl['phases']['feature extraction'] / lb['seconds']:9.2f} x")
        print(f"  {'transferlab end-to-end / lower bound':<52} {lower_ratio:9.2f} x")
        print(f"\n  {'':<28}{'wall s':>9}{'img/s':>9}{'peak GB':>9}{'val acc@0.5':>12}{'acc@youden':>11}{'val AUC':>9}")
        for name, res in (("baseline (tutorial loop)", base), ("transferlab features", tl)):
            if res:
                v = res["val"]
                print(f"  {name:<28}{res['wall']:9.1f}{n_img * args.epochs / res['wall']:9.1f}{res['peak_gb']:9.2f}"
                      f"{v['acc_at_0.5']:12.4f}{v['acc_at_youden']:11.4f}{v['auc']:9.4f}")
        if base:
            features_speedup = base["wall"] / tl["wall"]
            print(f"  ratio baseline/transferlab: end-to-end {features_speedup:.2f}x faster; feature extraction "
                  f"{base['phases']['backbone forward'] / tl['phases']['feature extraction']:.2f}x; "
                  f"val AUC {tl['val']['auc'] - base['val']['auc']:+.4f}, acc@0.5 "
                  f"{tl['val']['acc_at_0.5'] - base['val']['acc_at_0.5']:+.4f} (transferlab - baseline)")
    tf, bf = r.get("tl_finetune"), r.get("base_finetune")
    if tf:
        n_img = tf["n_train"] + tf["n_val"]
        print_phases(f"finetune: {tf['n_train']} train + {tf['n_val']} val images, {args.finetune_epochs} epochs, "
                     f"batch {r['finetune_batch_size']}", bf, tf)
        print(f"\n  {'':<28}{'epoch s':>24}{'later mean':>11}{'later min':>10}{'img/s':>7}{'peak GB':>8}"
              f"{'acc@0.5':>9}{'acc@youd':>9}{'AUC':>8}")
        for name, res in (("baseline (tutorial loop)", bf), ("transferlab finetune", tf)):
            if res:
                later = res["epochs"][1:] or res["epochs"]
                v = res["val"]
                epochs = " ".join(f"{e:.1f}" for e in res["epochs"])
                print(f"  {name:<28}{epochs:>24}{statistics.mean(later):11.1f}{min(later):10.1f}"
                      f"{n_img / min(later):7.1f}{res['peak_gb']:8.2f}{v['acc_at_0.5']:9.4f}"
                      f"{v['acc_at_youden']:9.4f}{v['auc']:8.4f}")
        if bf:
            b_later, t_later = bf["epochs"][1:] or bf["epochs"], tf["epochs"][1:] or tf["epochs"]
            # the fastest epoch after the first of each side: the least disturbed by other jobs on a shared machine
            finetune_speedup = min(b_later) / min(t_later)
            print(f"  ratio baseline/transferlab epoch time after the first epoch: {finetune_speedup:.2f}x "
                  f"(fastest later epoch of each; mean of later epochs: "
                  f"{statistics.mean(b_later) / statistics.mean(t_later):.2f}x); "
                  f"val AUC {tf['val']['auc'] - bf['val']['auc']:+.4f} (transferlab - baseline)")
    full = r.get("full_features")
    if full:
        s = full["seconds"]
        print(f"\n### full features run, child process: {full['n_train']} train + {full['n_val']} val images, "
              f"{args.epochs} epochs")
        print(f"  wall {full['wall']:.1f} s (decode {s['decode']:.1f}, features {s['prepare']:.1f}, fit {s['fit']:.1f}, "
              f"evaluate {s['evaluate']:.1f}, process start + imports + rest "
              f"{full['wall'] - s['decode'] - s['prepare'] - s['fit'] - s['evaluate']:.1f}); "
              f"peak RSS {full['peak_gb']:.2f} GB; val AUC {full['val_auc']:.4f}")
        print(f"  command: {full['command']}")
    pr = r.get("probes")
    if pr:
        print("\n### probes")
        for stmt, t in pr["import_s"].items():
            print(f"  import time  python -c '{stmt}': {t:.2f} s")
        if "digest" in pr:
            d = pr["digest"]
            print(f"  feature-cache key (_digest) over all {d['images']} images ({d['mb']:.0f} MB) + backbone "
                  f"weights: {d['seconds']:.2f} s = {100 * d['share_of_full_run']:.2f} % of the full features run")
        if "head_training" in pr:
            h = pr["head_training"]
            print(f"  head training on cached features, {h['steps']} steps: Lightning fit {h['lightning_fit_s']:.2f} s "
                  f"({h['lightning_ms_per_step']:.1f} ms/step incl. per-epoch validation + checkpoints) vs plain loop "
                  f"{h['plain_loop_s']:.2f} s ({h['plain_ms_per_step']:.1f} ms/step)")
        print("  finetune train step img/s: " + ", ".join(f"{k} {v:.2f}" for k, v in pr["finetune_step_img_s"].items()))
        print("  inference img/s: " + ", ".join(f"{k} {v:.2f}" for k, v in pr["inference_img_s"].items())
              + ("" if pr["inference_backbone_used"] else " (inference_backbone fell back to the eager backbone)"))
        print("  allocator (img/s, kernel time / wall): " + "; ".join(
            f"{k} {v['img_s']:.1f} ({100 * v['sys_share']:.0f} %)" for k, v in pr["allocator"].items()))
        print("  inference img/s by torch threads: " + ", ".join(f"{k} thread(s) {v:.2f}" for k, v in pr["threads_img_s"].items()))
        print("  augmentation + normalisation img/s: " + "; ".join(f"{k} {v:.1f}" for k, v in pr["augment_img_s"].items()))
    if r.get("profile"):
        print(f"\n### profile (torch.profiler, batch of {args.profile_batch} images; self CPU time by operator)")
        for what, t in r["profile"].items():
            print(f"  {what}: {t['total_s']:.2f} s")
            for name, count, secs, share in t["ops"]:
                print(f"    {name:<40} {count:5d} calls {secs:8.2f} s {100 * share:6.1f} %")
    peak = max([x for x in (full and full["peak_gb"], tl and tl["peak_gb"]) if x] or [float("nan")])
    print(f"\nSUMMARY features_speedup={_f(features_speedup)} finetune_epoch_speedup={_f(finetune_speedup)} "
          f"features_vs_lower_bound={_f(lower_ratio)} peak_rss_gb={_f(full['peak_gb'] if full else peak)}")


def _f(x) -> str:
    return "nan" if x is None or x != x else f"{x:.2f}"


if __name__ == "__main__":
    sys.exit(main())
