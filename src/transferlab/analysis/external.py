"""`evaluate`: score a finished run on its own split or on any other set of images, and measure the shift.

    evaluate("runs/lite0", split="test")                       the run's own test split, rebuilt from its seed
    evaluate("runs/lite0", data="hospital_b/")                 every image of another set (no carving)
    evaluate("runs/lite0", data="scans/", adapt=["prior", "bn"])   ... and label-free adaptation beside it
    evaluate("runs/lite0", data="scans/", label_budget=50)        which 50 images to label (to-label-scans.csv)
    evaluate("runs/lite0", data="scans/", labels="to-label-scans.csv", recalibrate=True)   what those labels say

Another set may be laid out as ROOT/CLASS/*, ROOT/test/CLASS/*, ROOT/{train,val,test}/CLASS/*, a manifest CSV,
or a flat folder of images (unlabelled: predictions and shift only). Its class folders are matched to the run's
classes by name (case-insensitively); a set whose classes the run does not know is scored as unlabelled.
Writes eval-<name>.json and predictions-<name>.csv into the run directory.
"""
from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.preprocess import of_run as preprocess_of
from ..config import TTA_HOW
from ..errors import TransferlabError
from ..evaluation import positive_index
from ..metrics import choose_threshold
from ..rundir import RunDir, read_csv, write_csv
from . import shift as sh
from .adaptation import (ADAPT_HELP, adapted_probabilities, calibration_of, parse_adapt, run_threshold_method,
                         target_prior_of)
from .decision import verdict
from .domain import file_statistics, statistics_shift
from .ensemble_scoring import PER_MODEL, score_from_members
from .set_scores import predicted_shares, scores_with_cis
from .target_labels import labelled_blocks, plan_labels


def check_options(*, tta: int = 1, label_budget=None, labels=None, recalibrate: bool = False) -> None:
    """evaluate's options that can be wrong, checked before any work (one line each)."""
    if not isinstance(tta, int) or tta < 1:
        raise TransferlabError(f"--tta must be at least 1 (1 = no augmentation), not {tta}")
    if label_budget is not None and (not isinstance(label_budget, int) or label_budget < 1):
        raise TransferlabError(f"--label-budget must be a whole number of images, at least 1, not {label_budget}")
    if labels is not None and not Path(labels).expanduser().is_file():
        raise TransferlabError(f"--labels {labels}: no such file")
    if recalibrate and labels is None:
        raise TransferlabError("--recalibrate needs --labels FILE: labels of some of the set's images "
                               "(--label-budget K chooses which and writes the file to fill in)")


@dataclass
class Target:
    """The images to score: files, labels as indices of the run's classes (-1: unknown) and pixels."""
    name: str
    root: Path
    layout: str
    files: list[Path]
    labels: np.ndarray
    pixels: np.ndarray
    own_split: str | None = None            # "test" etc. when these are the run's own split's images
    bad: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return len(self.labels) > 0 and bool((self.labels >= 0).all())


def evaluate(run_dir: str | Path, *, data: str | Path | None = None, split: str | None = None,
             manifest: str | None = None, name: str | None = None, adapt=None, unlabelled: bool = False,
             shift: bool = True, device: str = "auto", progress: bool = True, n_boot: int = 1000,
             seed: int = 0, tta: int = 1, label_budget: int | None = None, labels: str | Path | None = None,
             recalibrate: bool = False, skip_bad: bool = False) -> dict:
    """Metrics of a finished run (labels permitting), the label-free shift estimates, and any adaptation. An
    ensemble directory: each member evaluated so (its own eval-NAME.json), then the mean of their probabilities
    scored at the ensemble's threshold (analysis.ensemble_scoring).

    Without `data` (or with the run's own data and no manifest) the run's `split` (default "test") is rebuilt
    from its saved settings and seed, whole (without the run's `max_images`). Any other `data` is scored whole:
    every image, no carving (`split` then picks one split folder of it). The decision threshold is always the
    run's, chosen on validation.
    `tta` > 1 also scores the mean probabilities over that many test-time views, beside the plain result.
    `label_budget` K: choose the K images whose labels tell most and write to-label-NAME.csv; `labels`: that file
    (or any path,label CSV) filled in: whole-set estimates from those labels; `recalibrate`: the threshold and
    temperature re-chosen on them (analysis.target_labels). The result's `next_step` says what to do next.
    Unreadable images stop it with one line naming them, as `train` and `predict` do; `skip_bad` scores the others
    and lists the skipped ones in the result (n_unreadable, unreadable)."""
    from ..runtime import resolve_device
    from ..evaluation import load_model

    check_options(tta=tta, label_budget=label_budget, labels=labels, recalibrate=recalibrate)
    start = time.perf_counter()
    run = RunDir(run_dir)
    if run.is_ensemble():
        asked = {"adapt": adapt, "tta": tta != 1, "label_budget": label_budget, "labels": labels,
                 "recalibrate": recalibrate}
        per_model = [PER_MODEL[key] for key, value in asked.items() if value]
        if per_model:
            raise TransferlabError(f"{run.path} is an ensemble: evaluate one of its members for "
                                   f"{', '.join(per_model)} (they act on one model's outputs)")
        names = {evaluate(member, data=data, split=split, manifest=manifest, name=name, unlabelled=unlabelled,
                          shift=shift, device=device, progress=progress, n_boot=n_boot, seed=seed,
                          skip_bad=skip_bad)["name"] for member in run.members()}
        if len(names) > 1:
            raise TransferlabError(f"the members of {run.path} named the set differently "
                                   f"({', '.join(sorted(names))}): give --name")
        return score_from_members(run, names.pop(), n_boot=n_boot, seed=seed)
    model, config = load_model(run)
    metrics_json = run.read_metrics()
    adapt = parse_adapt(adapt)
    dev = resolve_device(device)
    target = load_target(run, config, data=data, split=split, manifest=manifest, name=name, unlabelled=unlabelled,
                         progress=progress, skip_bad=skip_bad)
    classes = config["data"]["classes"]
    pos = positive_index(classes, metrics_json["positive_class"])
    threshold = metrics_json.get("threshold")
    score = _Scorer(model, config, dev, progress)
    probs, feats = score(target.pixels)
    pred = _decide(probs, pos, threshold)
    result = {"run": str(run.path), "name": target.name, "data": str(target.root), "layout": target.layout,
              "scored": (f"the run's own {target.own_split} split (rebuilt from its settings and seed)"
                         if target.own_split else "every image (no carving)"),
              "n": len(target.files), "n_unreadable": len(target.bad), "unreadable": target.bad[:20],
              "has_labels": target.labelled, "classes": classes, "positive_class": metrics_json["positive_class"],
              "threshold": threshold, "threshold_chosen_on": "val" if threshold is not None else None,
              "notes": target.notes, "adapt": adapt, "predicted_share": predicted_shares(pred, classes)}
    if target.labelled:
        result.update(scores_with_cis(target.labels, probs, pos, threshold, n_boot, seed, classes))
        started_from = config["settings"].get("init")
        if started_from and (Path(started_from) / "model.safetensors").exists():
            result["versus_init"] = _versus_init(started_from, target, pred, dev, progress, n_boot, seed)

    compare = shift or adapt or tta != 1
    source = source_side(run, config, score) if compare and target.own_split != "val" else None
    if source is None and compare and target.own_split != "val":
        result["notes"].append("the run's validation images could not be read, so nothing that compares with "
                               "validation (shift estimates, adaptation) was computed")
    if shift and source is not None:
        estimate = sh.estimate_shift(classes=classes, val_y=source["y"], val_probs=source["probs"],
                                     val_pred=source["pred"], target_probs=probs, target_pred=pred,
                                     val_features=source["feats"], target_features=feats, seed=seed,
                                     calibration=calibration_of(source), target_prior=target_prior_of(probs, source))
        estimate["image_statistics"] = statistics_shift(file_statistics(source["files"]),
                                                        file_statistics(target.files))
        truth = sh.compare_with_truth(estimate, target.labels if target.labelled else None, pred)
        result["shift"], result["truth"] = estimate, truth
        result["findings"] = sh.shift_findings(estimate, truth, name=f"the {target.name} set",
                                               positive=metrics_json["positive_class"])
    columns = {"": (probs, pred)}
    if label_budget:
        result["label_budget"] = plan_labels(run.path, target.name, target.files, probs, pred, label_budget, seed)
    if labels:
        blocks = labelled_blocks(run.path, target.name, labels, files=target.files, root=target.root, classes=classes,
                                 probs=probs, pred=pred, pos=pos if len(classes) == 2 else None,
                                 threshold_method=run_threshold_method(config), recalibrate=recalibrate,
                                 target_labels=target.labels if target.labelled else None, threshold=threshold,
                                 score_exact=lambda y, p, t: scores_with_cis(y, p, pos, t, n_boot, seed, classes), seed=seed)
        if "_recalibrated_decision" in blocks:
            columns["recalibrated"] = (blocks.pop("_recalibrated_probs"), blocks.pop("_recalibrated_decision"))
        result.update(blocks)
    if adapt:
        result["adapted"] = {}
    for method, (a_probs, a_threshold, info) in adapted_probabilities(adapt, model, config, target.pixels, probs,
                                                                      source, score).items():
        a_pred = _decide(a_probs, pos, a_threshold)
        entry = {"how": ADAPT_HELP[method], **info, "threshold": a_threshold, "predicted_share": predicted_shares(a_pred, classes)}
        if target.labelled:
            entry.update(scores_with_cis(target.labels, a_probs, pos, a_threshold, n_boot, seed, classes))
        result["adapted"][method] = entry
        columns[method] = (a_probs, a_pred)
    if tta != 1:
        t_probs, t_threshold, info = _tta(tta, model, config, target, source, pos, threshold, dev, progress, seed,
                                          weights=run.weights)
        t_pred = _decide(t_probs, pos, t_threshold)
        result["tta"] = {**info, "threshold": t_threshold, "predicted_share": predicted_shares(t_pred, classes)}
        if target.labelled:
            result["tta"].update(scores_with_cis(target.labels, t_probs, pos, t_threshold, n_boot, seed, classes))
        columns["tta"] = (t_probs, t_pred)
    result["next_step"] = verdict(result, metrics_json.get("val", {}))
    result["seconds"] = time.perf_counter() - start
    run.write_evaluation(result)
    write_csv(run.path / f"predictions-{target.name}.csv", _prediction_rows(target, classes, columns))
    return result


def _versus_init(started_from: str, target: Target, pred: np.ndarray, device, progress: bool, n_boot: int,
                 seed: int) -> dict:
    """A --init run's starting point scored on the same images: its metrics, and McNemar against the new run."""
    from ..evaluation import load_model
    from ..metrics import mcnemar

    model, config = load_model(started_from)
    metrics = RunDir(started_from).read_metrics()
    classes = config["data"]["classes"]
    pos = positive_index(classes, metrics["positive_class"])
    probs, _ = _Scorer(model, config, device, progress)(target.pixels)
    before = _decide(probs, pos, metrics.get("threshold"))
    return {"run": started_from, **scores_with_cis(target.labels, probs, pos, metrics.get("threshold"), n_boot, seed, classes),
            "mcnemar": mcnemar(target.labels, pred, before)}


# --- the target images ------------------------------------------------------------------------------------------

def load_target(run: RunDir, config: dict, *, data=None, split=None, manifest=None, name=None,
                unlabelled: bool = False, progress: bool = True, skip_bad: bool = False) -> Target:
    from ..config import TrainConfig
    from ..data.discover import discover, discover_unlabelled, has_class_folders
    from ..data.images import load_images, unreadable_error
    from ..training import prepare_data

    settings = config["settings"]
    own_root = Path(config["data"]["root"])
    size = config["model"]["image_size"]
    if data is None or (Path(data).expanduser().resolve() == own_root and manifest == settings.get("manifest")
                        and not unlabelled):
        split = split or "test"
        cfg = TrainConfig.from_dict(dict(settings, data=str(own_root), max_images=None, progress=progress,
                                         resume=False, init=None))   # init: its model is in settings already
        prepared = prepare_data(cfg, size)
        if split not in prepared.pixels:
            raise TransferlabError(f"{own_root} has no {split!r} split (it has {', '.join(prepared.pixels)})")
        return Target(name or split, own_root, "the run's own splits", [s.path for s in prepared.samples[split]],
                      prepared.labels(split), prepared.pixels[split], own_split=split)

    root = Path(data).expanduser()
    pattern = settings.get("patient_pattern")
    kwargs = {"patient_pattern": pattern} if pattern else {}
    if unlabelled or (manifest is None and root.is_dir() and not has_class_folders(root)):
        index, layout = discover_unlabelled(root), "unlabelled folder"
    else:
        index = discover(root, manifest=manifest, require_train=False, min_classes=1, **kwargs)
        splits = index.source_splits
        layout = ("manifest" if manifest else "class folders" if splits == ["all"]
                  else f"split folders ({', '.join(splits)})")
    samples = index.samples
    if split is not None:
        samples = index.split(split)
        if not samples:
            raise TransferlabError(f"{index.root} has no {split}/ folder (it has {', '.join(index.source_splits)})")
    notes = []
    fitted_on = _fitted_on(run, own_root)
    kept = [s for s in samples if not fitted_on(s.path)]
    if len(kept) < len(samples):
        notes.append(f"left out {len(samples) - len(kept)} image(s) the run was trained or validated on (the same "
                     f"file or the same bytes; its splits.csv): only the other images are scored")
        if not kept:
            raise TransferlabError(f"{index.root}: every image is one the run was trained or validated on")
    samples = kept
    run_classes = config["data"]["classes"]
    lookup = {c.lower(): i for i, c in enumerate(run_classes)}
    unknown = [c for c in index.classes if c.lower() not in lookup]
    if unknown:
        notes.append(f"classes {', '.join(unknown)} are not among the run's classes ({', '.join(run_classes)}): "
                     f"scored as an unlabelled set (predictions and shift only)")
    labels = np.array([-1 if unknown or s.label < 0 else lookup[index.classes[s.label].lower()] for s in samples],
                      dtype=np.int64)
    loaded = load_images([s.path for s in samples], size, preprocess=preprocess_of(config), skip_bad=True,
                         progress=progress)
    if loaded.bad and not skip_bad:
        raise unreadable_error(loaded.bad, len(samples))
    if loaded.bad:
        notes.append(f"skipped {len(loaded.bad)} unreadable file(s) of {len(samples)}: "
                     + "; ".join(f"{p} ({r})" for p, r in loaded.bad[:3])
                     + ("; ... (all listed in the JSON)" if len(loaded.bad) > 3 else ""))
    if not loaded.kept:
        raise TransferlabError(f"{index.root}: none of the {len(samples)} images could be read")
    return Target(name or default_name(index.root, split), index.root, layout,
                  [samples[i].path for i in loaded.kept], labels[loaded.kept], loaded.pixels, bad=loaded.bad,
                  notes=notes)


def _fitted_on(run: RunDir, root: Path):
    """A test: was this file one of the run's train or val images (the same path, or the same bytes, e.g. the
    labelled target images of a --init run copied elsewhere)? Only files of a size found there are hashed."""
    from ..data.split import file_digest

    if not run.splits.exists():
        return lambda path: False
    fitted = [(Path(r["file"]) if Path(r["file"]).is_absolute() else root / r["file"]).resolve()
              for r in read_csv(run.splits) if r["split"] in ("train", "val")]
    by_size: dict[int, list[Path]] = {}
    for f in fitted:
        if f.exists():
            by_size.setdefault(f.stat().st_size, []).append(f)
    paths, digests = set(fitted), {}

    def seen(path: Path) -> bool:
        path = path.resolve()
        if path in paths:
            return True
        same_size = by_size.get(path.stat().st_size) if path.exists() else None
        if not same_size:
            return False
        for f in same_size:
            if f not in digests:
                digests[f] = file_digest(f)
        return file_digest(path) in {digests[f] for f in same_size}
    return seen


def default_name(root: Path, split: str | None = None) -> str:
    """'hospital_b' for .../hospital_b, 'chest_xray-test' for .../chest_xray/test: safe in a file name."""
    parts = [root.parent.name, root.name] if root.name.lower() in ("train", "val", "test") else [root.name]
    parts += [split] if split else []
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(p for p in parts if p)) or "external"


# --- scoring ------------------------------------------------------------------------------------------------------

class _Scorer:
    """Probabilities and backbone features of uint8 images under the run's normalisation."""

    def __init__(self, model, config, device, progress):
        self.model, self.device, self.progress = model, device, progress
        self.mean, self.std = config["model"]["mean"], config["model"]["std"]

    def __call__(self, pixels: np.ndarray, model=None) -> tuple[np.ndarray, np.ndarray]:
        from ..evaluation import probabilities_and_features

        return probabilities_and_features(model or self.model, pixels, mean=self.mean, std=self.std,
                                          device=self.device, progress=self.progress)


def _decide(probs: np.ndarray, pos: int, threshold: float | None) -> np.ndarray:
    from ..evaluation import decide

    return decide(probs, pos, threshold)


_SOURCES: dict = {}   # the last runs' source sides: a study or the harness scores one run on several sets


def source_side(run: RunDir, config: dict, score) -> dict | None:
    """The run's validation split (from splits.csv), scored now: labels, probabilities, decisions, features."""
    from ..data.images import load_images

    if not run.splits.exists():
        return None
    key = (str(run.path.resolve()), run.weights.stat().st_mtime_ns, run.splits.stat().st_mtime_ns)
    if key in _SOURCES:
        return _SOURCES[key]
    root = Path(config["data"]["root"])
    classes = config["data"]["classes"]
    rows = [r for r in read_csv(run.splits) if r["split"] == "val"]
    files = [Path(r["file"]) if Path(r["file"]).is_absolute() else root / r["file"] for r in rows]
    if not rows or not all(f.exists() for f in files):
        return None
    loaded = load_images(files, config["model"]["image_size"], preprocess=preprocess_of(config), skip_bad=True,
                         progress=False)
    y = np.array([classes.index(rows[i]["label"]) for i in loaded.kept])
    probs, feats = score(loaded.pixels)
    metrics = run.read_metrics()
    pos = positive_index(classes, metrics["positive_class"])
    _SOURCES.clear()
    _SOURCES[key] = {"y": y, "probs": probs, "feats": feats, "pred": _decide(probs, pos, metrics.get("threshold")),
                     "files": [files[i] for i in loaded.kept], "pixels": loaded.pixels, "pos": pos,
                     "threshold": metrics.get("threshold")}
    return _SOURCES[key]


_TTA_SEEN: dict = {}   # (weights file and its mtime, views, seed, pixels' digest) -> probabilities; a few entries


def _tta(views: int, model, config: dict, target: Target, source: dict | None, pos: int | None,
         threshold: float | None, device, progress: bool, seed: int, *, weights: Path):
    """Target probabilities averaged over `views` test-time views, and the decision threshold for them: averaged
    probabilities are less extreme than single-view ones, so a binary run's threshold is re-chosen with its own
    method on validation's test-time-augmented probabilities (the run's plain one if validation is unreadable).

    Seeded views of the same pixels through the same weights give the same probabilities, so they are computed
    once per process: a study scoring a run's validation and then its test split augments validation once."""
    from ..evaluation import tta_probabilities

    kwargs = dict(views=views, mean=config["model"]["mean"], std=config["model"]["std"], device=device, seed=seed,
                  progress=progress)

    def tta_probabilities_once(pixels):
        digest = hashlib.blake2b(np.ascontiguousarray(pixels).data, digest_size=16).hexdigest()
        key = (str(weights), weights.stat().st_mtime_ns, views, seed, pixels.shape, digest)
        if key not in _TTA_SEEN:
            while len(_TTA_SEEN) >= 4:
                _TTA_SEEN.pop(next(iter(_TTA_SEEN)))
            _TTA_SEEN[key] = tta_probabilities(model, pixels, **kwargs)
        return _TTA_SEEN[key]

    probs = tta_probabilities_once(target.pixels)
    info = {"views": views, "how": TTA_HOW, "threshold_chosen_on": "val" if threshold is not None else None}
    if threshold is None or pos is None:
        return probs, threshold, info
    if target.own_split == "val":
        val_y, val_probs = target.labels, probs
    elif source is not None:
        val_y, val_probs = source["y"], tta_probabilities_once(source["pixels"])
    else:
        info["threshold_chosen_on"] = "val, plain probabilities (the validation images could not be read)"
        return probs, threshold, info
    threshold = choose_threshold((val_y == pos).astype(int), val_probs[:, pos], run_threshold_method(config))
    info["threshold_chosen_on"] = f"val, {views}-view probabilities"
    return probs, threshold, info


# --- metrics and outputs -------------------------------------------------------------------------------------

def _prediction_rows(target: Target, classes: list[str], columns: dict) -> list[dict]:
    rows = []
    for i, path in enumerate(target.files):
        row = {"file": str(path.relative_to(target.root)) if path.is_relative_to(target.root) else str(path),
               "label": classes[target.labels[i]] if target.labels[i] >= 0 else ""}
        for method, (probs, pred) in columns.items():
            suffix = f"_{method}" if method else ""
            row.update({f"prob_{c}{suffix}": float(probs[i, k]) for k, c in enumerate(classes)})
            row[f"predicted{suffix}"] = classes[pred[i]]
        rows.append(row)
    return rows
