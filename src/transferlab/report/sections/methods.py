"""The Methods section: data, splits, preprocessing, seeds, the training settings per run group, the environment."""
from __future__ import annotations

from ...analysis import Run
from ...data.preprocess import describe as describe_preprocess
from ...data.preprocess import of_run as preprocess_of
from ...formatting import MISSING
from ...settings import SETTINGS, as_today
from ..blocks import NOT_APPLICABLE, Section, Table

SETTINGS_SHOWN = [s.name for s in SETTINGS.values() if s.report]


def _setting(strategy: str, key: str, config: dict) -> str:
    """A training setting as the methods table shows it: what the strategy really did."""
    settings = config["settings"]
    views = settings.get("feature_views", 1)
    if strategy == "features" and key in ("augment", "augment_strength") and views == 1:
        return "no (frozen features)" if key == "augment" else NOT_APPLICABLE
    if strategy == "features" and key == "backbone_lr_factor":
        return f"{MISSING} (backbone frozen)"
    if (key in ("probe_epochs", "probe_lr") and strategy != "lpft") \
            or (key == "unfreeze" and strategy == "features") or strategy not in SETTINGS[key].strategies \
            or key not in settings:   # a run older than the setting
        return NOT_APPLICABLE
    value = as_today(key, settings[key])   # augment true/false of earlier runs: basic/none
    if key == "lr" and value == "auto" and config.get("lr_find"):
        return f"auto: {config['lr_find']['suggested_lr']:.3g} (LR finder)"
    return str(value)


def _recipe_prose(runs: list[Run]) -> str:
    """What mixup, cutmix and weight averaging do, where a run used them."""
    used = [r.config["settings"] for r in runs]
    text = ""
    if any(s.get("mixup") or s.get("cutmix") for s in used):
        text += (" With mixup or cutmix, each training batch's images are blended in pairs (mixup) or have a box "
                 "pasted from another image (cutmix), their labels mixed in the same proportion.")
    if any(s.get("weight_averaging", "none") != "none" for s in used):
        text += (" With weight_averaging, validation, early stopping, the best epoch and the saved model use an "
                 "average of the weights (ema: exponential moving average over optimizer steps; swa: equal average "
                 "over the last quarter of the epochs).")
    return text


def methods_section(a: dict, info: dict) -> Section:
    s = Section("section-methods", "Methods")
    run: Run = a["runs"][0]
    c, d = info["config"], run.config["data"]
    s.p(f"Data: {d['root']} (fingerprint {str(d.get('fingerprint', ''))[:12]}), classes {', '.join(d['classes'])}, "
        + (f"positive class {d['positive_class']}. " if d.get("positive_class") else "decided by the most probable "
           "class. ") + f"{d.get('skipped_at_discovery', 0)} files skipped at discovery, "
        f"{d.get('bad_files_skipped', 0)} unreadable files skipped.")
    method = d.get("splits", {})
    s.p(f"Splits: patient-disjoint and stratified by class (scikit-learn StratifiedGroupKFold; patient id from the file "
        f"name), split seed {c['split_seed']} for every run, so every run saw the same train/validation/test images. "
        f"Validation: {method.get('val', '?')}. Test: {method.get('test', '?')}. "
        + (f"The decision threshold ({run.metrics.get('threshold_method', 'youden')}) and the best epoch were chosen "
           if run.positive else "Decisions: the most probable class (no threshold); the best epoch was chosen ")
        + "on validation only; the test split was only ever scored.")
    sizes = ", ".join(dict.fromkeys(f"{r.model} {r.config['model']['image_size']} px" for r in a["runs"]))
    equalised = sorted({preprocess_of(r.config) for r in a["runs"]} - {"none"})
    s.p(f"Preprocessing: each image decoded once (grayscale kept as 1 channel and broadcast to the 3 input channels), "
        f"resized without cropping to the model's input size ({sizes}), "
        + "".join(f"then, where --preprocess {name}: {describe_preprocess(name)}; " for name in equalised)
        + "normalised with the weights' own mean and std. "
        f"Fine-tuning augments training images as the augment setting says (basic: small rotation, translation, "
        f"scale, brightness/contrast; xray: also gamma, blur or sharpening, noise, JPEG quality and resolution; no "
        f"flips); frozen features are computed with the backbone in eval mode, once per image from un-augmented "
        f"images, plus feature_views - 1 augmented views of each training image where that is above 1."
        + (" LP-FT (Kumar et al. 2022) first trains the head on those frozen features for probe_epochs (every epoch "
           "run, the best on validation kept), then fine-tunes the whole network from that head at its own, lower, "
           "learning rate; its best epoch is chosen among the fine-tuning epochs, on validation."
           if any(st == "lpft" for _, st in a["groups"]) else "") + _recipe_prose(a["runs"]))
    s.p(f"Seeds: {', '.join(map(str, c['seeds']))} (initialisation of the new head, data order, augmentation); "
        f"results are reported as mean ± sd over seeds.")
    groups = {f"{m} {st}": {**{k: _setting(st, k, runs[0].config) for k in SETTINGS_SHOWN},
                            "image_size": str(runs[0].config["model"]["image_size"])}
              for (m, st), runs in a["groups"].items()}
    unused = [k for k in SETTINGS_SHOWN if all(g[k] == NOT_APPLICABLE for g in groups.values())]
    groups = {name: {k: v for k, v in g.items() if k not in unused} for name, g in groups.items()}
    keys = list(next(iter(groups.values())))
    same = [k for k in keys if len({g[k] for g in groups.values()}) == 1]
    differ = [k for k in keys if k not in same]
    how = ("AdamW, cosine learning-rate schedule, early stopping on the monitored validation metric; class-weighted "
           "loss unless balance says otherwise")
    if differ:
        s.table(Table(["run group", *differ], [[name, *[g[k] for k in differ]] for name, g in groups.items()],
                      f"Training settings that differ between the run groups ({how})."))
    s.table(Table(["setting", "value"], [[k, next(iter(groups.values()))[k]] for k in same],
                  "Training settings shared by every run" + ("." if differ else f" ({how}).")))
    env = run.config.get("environment", {})
    s.table(Table(["software / hardware", "value"], [[k, str(v)] for k, v in env.items()] +
                  [["training device", str(run.config.get("device"))],
                   ["training time, all runs", f"{sum(r.metrics['seconds']['total'] for r in a['runs']):.0f} s "
                                               f"(sum of the runs' total seconds)"]],
                  "From the runs' config.json."))
    return s
