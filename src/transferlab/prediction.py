"""`predict`: class probabilities of new images from a finished run, optionally with Grad-CAM overlays.

Images are decoded and resized exactly as in training (`load_images`), normalised with the run's mean/std,
and classified as the run decides: two classes at the decision threshold the run chose on its validation split,
three or more by the most probable class.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .data.preprocess import of_run as preprocess_of
from .config import TTA_HELP
from .errors import TransferlabError
from .settings import add_flag, at_least

# torch, Lightning and friends are imported inside the functions, so that the command line stays fast to start


def find_images(paths) -> list[Path]:
    """The given files, plus every image file (by extension, hidden ones left out) under the given folders."""
    from .data.discover import IMAGE_EXTENSIONS

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.exists():
            found.append(p)
        else:
            raise TransferlabError(f"{p}: no such file or folder")
    if not found:
        raise TransferlabError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {', '.join(map(str, paths))}")
    return found


def predict(run_dir, paths, cam: bool = False, out=None, *, skip_bad: bool = False, device: str = "auto",
            progress: bool = False, adapt=None, tta: int = 1) -> list[dict]:
    """One row per image: file, prob_<class> for every class, predicted (two classes: at the run's
    validation-chosen threshold, also given as `threshold`; three or more: the most probable class), with
    --adapt also prob_<class>_<method> and predicted_<method> (likewise _tta with tta > 1: the mean over that many
    test-time views, decided at a threshold re-chosen on validation's views), and with cam=True the path of its Grad-CAM
    overlay PNG (written to cam/ beside `out`).
    Unreadable files stop with one line naming them, or with skip_bad are left out with a warning.
    `out`: CSV file to write the rows to."""
    import numpy as np
    from PIL import Image

    from .analysis.errors import gradcam_overlays
    from .data.images import load_images
    from .data.transforms import ImageTensorDataset
    from .evaluation import decide, load_model
    from .inference import predict_probs
    from .rundir import RunDir, write_csv
    from .runtime import resolve_device

    if cam and out is None:
        raise TransferlabError("Grad-CAM overlays are written beside the CSV: give --out as well")
    if tta < 1:
        raise TransferlabError(f"--tta must be at least 1 (1 = no augmentation), not {tta}")
    run = RunDir(run_dir)
    if run.is_ensemble():
        if cam or adapt or tta != 1:
            raise TransferlabError(f"{run.path} is an ensemble: predict with one of its runs for --cam, --adapt or --tta")
        rows = _predict_ensemble(run, paths, skip_bad=skip_bad, device=device, progress=progress)
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            write_csv(Path(out), rows)
        return rows
    model, config = load_model(run)
    metrics = run.read_metrics()
    classes, threshold = config["data"]["classes"], metrics.get("threshold")
    pos = None if metrics["positive_class"] is None else classes.index(metrics["positive_class"])
    files = find_images(paths)
    loaded = load_images(files, config["model"]["image_size"], preprocess=preprocess_of(config), skip_bad=skip_bad,
                         progress=progress)
    for path, reason in loaded.bad:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    if not loaded.kept:
        raise TransferlabError("none of the images could be read")
    mean, std = config["model"]["mean"], config["model"]["std"]
    dataset = ImageTensorDataset(loaded.pixels, np.zeros(len(loaded.kept)), mean=mean, std=std)
    probs = predict_probs(model, dataset, device=resolve_device(device), progress=progress)
    rows = []
    for i, p, predicted in zip(loaded.kept, probs, decide(probs, pos, threshold)):
        rows.append({"file": str(files[i]), **{f"prob_{c}": float(v) for c, v in zip(classes, p)},
                     "predicted": classes[predicted], **({"threshold": threshold} if pos is not None else {})})
    _add_adapted(rows, adapt, run, model, config, loaded.pixels, probs, pos, resolve_device(device), progress)
    _add_tta(rows, tta, run, model, config, loaded.pixels, pos, threshold, resolve_device(device), progress)
    if cam:
        folder = Path(out).parent / "cam"
        folder.mkdir(parents=True, exist_ok=True)
        targets = [pos if pos is not None else classes.index(r["predicted"]) for r in rows]
        overlays = [overlay for _, overlay, _ in gradcam_overlays(model, loaded.pixels, mean=mean, std=std,
                                                               targets=targets)]
        names: set[str] = set()
        for row, overlay in zip(rows, overlays):
            name = _unique(Path(row["file"]).stem, names)
            row["cam"] = str(folder / f"{name}.png")
            Image.fromarray(overlay).save(row["cam"])
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_csv(Path(out), rows)
    return rows


def _predict_ensemble(run, paths, **kwargs) -> list[dict]:
    """The members' probabilities averaged image by image, decided at the ensemble's validation threshold."""
    import numpy as np

    from .evaluation import decide

    metrics = run.read_metrics()
    classes, threshold = metrics["classes"], metrics["threshold"]
    pos = None if metrics["positive_class"] is None else classes.index(metrics["positive_class"])
    columns = [f"prob_{c}" for c in classes]
    per_member = [{r["file"]: r for r in predict(member, paths, **kwargs)} for member in run.members()]
    files = list(per_member[0])
    probs = np.mean([[[rows[f][c] for c in columns] for f in files] for rows in per_member], axis=0)
    return [{"file": f, **{c: float(v) for c, v in zip(columns, p)}, "predicted": classes[k],
             **({"threshold": threshold} if pos is not None else {})}
            for f, p, k in zip(files, probs, decide(probs, pos, threshold))]


def _add_adapted(rows, adapt, run, model, config, pixels, probs, pos, device, progress) -> None:
    """prob_<class>_<method> and predicted_<method> columns for each label-free adaptation (--adapt): these
    images are the target; the run's validation images are the source."""
    from .analysis.adaptation import adapted_probabilities, parse_adapt
    from .analysis.external import _Scorer, source_side
    from .evaluation import decide

    adapt = parse_adapt(adapt)
    if not adapt:
        return
    scorer = _Scorer(model, config, device, progress)
    source = source_side(run, config, scorer)
    if source is None:
        raise TransferlabError(f"--adapt needs the run's validation images, which cannot be read from "
                               f"{config['data']['root']}")
    classes = config["data"]["classes"]
    for method, (a_probs, a_threshold, _) in adapted_probabilities(adapt, model, config, pixels, probs, source,
                                                                   scorer).items():
        for row, p, k in zip(rows, a_probs, decide(a_probs, pos, a_threshold)):
            row.update({f"prob_{c}_{method}": float(v) for c, v in zip(classes, p)})
            row[f"predicted_{method}"] = classes[k]


def _add_tta(rows, views, run, model, config, pixels, pos, threshold, device, progress) -> None:
    """prob_<class>_tta and predicted_tta: the mean over `views` test-time views of each image."""
    import numpy as np

    from .analysis.external import Target, _Scorer, _tta, source_side
    from .evaluation import decide

    if views == 1:
        return
    source = source_side(run, config, _Scorer(model, config, device, progress))
    target = Target(name="predict", root=Path("."), layout="files", files=[], labels=np.zeros(0), pixels=pixels)
    probs, t_threshold, info = _tta(views, model, config, target, source, pos, threshold, device, progress, seed=0,
                                      weights=run.weights)
    if source is None and threshold is not None:
        print(f"warning: --tta: {info['threshold_chosen_on']}", file=sys.stderr)
    classes = config["data"]["classes"]
    for row, p, k in zip(rows, probs, decide(probs, pos, t_threshold)):
        row.update({f"prob_{c}_tta": float(v) for c, v in zip(classes, p)})
        row["predicted_tta"] = classes[k]
        if t_threshold is not None:
            row["threshold_tta"] = t_threshold


def _unique(stem: str, taken: set[str]) -> str:
    name, k = stem, 1
    while name in taken:
        k += 1
        name = f"{stem}-{k}"
    taken.add(name)
    return name


def format_table(rows: list[dict]) -> str:
    """The rows as an aligned text table (file, probabilities, prediction)."""
    columns = [c for c in rows[0] if c.startswith("prob_")]
    decisions = [c for c in rows[0] if c.startswith("predicted")]
    width = min(60, max(len(r["file"]) for r in rows))
    lines = [f"{'file':<{width}}  " + "  ".join(f"{c[5:]:>10}" for c in columns) + "  " + "  ".join(decisions)]
    for r in rows:
        name = r["file"] if len(r["file"]) <= width else "..." + r["file"][-width + 3:]
        lines.append(f"{name:<{width}}  " + "  ".join(f"{r[c]:>10.4f}" for c in columns) + "  "
                     + "  ".join(f"{r[c]:<{len(c)}}" for c in decisions))
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------------------

def add_predict_arguments(subparsers) -> None:
    p = subparsers.add_parser("predict", help="class probabilities of new images (and Grad-CAM overlays)",
                              description="Classify image files or folders (JPEG, PNG, DICOM, ...) with a finished "
                                          "run: two classes at the decision threshold it chose on validation, "
                                          "three or more by the most probable class. Prints a table and writes "
                                          "it to --out.")
    p.add_argument("run", help="run directory written by `transferlab train` (or a study's runs/NAME)")
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default: predictions.csv)")
    p.add_argument("--cam", action="store_true", help="also write Grad-CAM overlay PNGs to cam/ beside the CSV "
                                                      "(for the positive class of a two-class problem, else for "
                                                      "the predicted class)")
    add_flag(p, "skip_bad")
    p.add_argument("--adapt", help="also predict with label-free adaptation to these images (they are the target; "
                                   "the run's validation images the source): prior, bn, bn+prior, a comma list or all")
    p.add_argument("--tta", type=at_least(1, "--tta"), default=1, metavar="N",
                   help=TTA_HELP.replace("score", "predict with"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run_predict(args) -> None:
    rows = predict(args.run, args.images, cam=args.cam, out=args.out, skip_bad=args.skip_bad, device=args.device,
                   progress=args.progress, adapt=args.adapt, tta=args.tta)
    print(format_table(rows))
    threshold = rows[0].get("threshold")
    print(f"{len(rows)} image(s)" + (f"; threshold {threshold:.3f} chosen on the run's validation split" if threshold
                                     is not None else "; predicted = the most probable class") + f"; wrote {args.out}" + (
        f" and {len(rows)} Grad-CAM overlays in {Path(args.out).parent / 'cam'}" if args.cam else ""))
