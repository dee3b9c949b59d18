"""What to do with a run on a new set of images: one verdict per set, with the evidence behind it.

    usable       no loss shown: measured (labels) within TOLERANCE of validation, or, without labels, nothing
                 tells the images from validation's beyond their class mix
    recalibrate  the ranking holds (AUC close to validation's) but the decision rule does not: re-choose the
                 threshold and temperature on a few labelled target images (--labels FILE --recalibrate)
    retrain      the ranking itself is lost: continue training on labelled target images (train --init RUN)
    not_shown    the model separates the classes barely or not at all there, or (without labels) the images are
                 told from validation's almost perfectly: it has not been shown to work; check with labels
    label        without labels the images differ from validation's: label K images (--label-budget K) to know

Measured numbers come from the set's own labels when it has them, else from a `labelled` block (a label
budget's estimates, with intervals); `recalibrated` (cross-fitted) decides between recalibrate and retrain.
"""
from __future__ import annotations

from ..formatting import MISSING

TOLERANCE = 0.03      # balanced accuracy this far below validation's (upper end of its interval) counts as "no loss"
NO_SKILL_AUC = 0.7    # an AUC whose interval stays below this: the classes are barely separated
RANKING_KEPT = 0.03   # AUC within this of validation's (upper end of its interval): the ranking holds


def verdict(result: dict, val: dict) -> dict:
    """{"verdict", "why"} for one evaluated set; `val`: the run's validation metrics (metrics.json "val")."""
    val_at = val.get("at_threshold", val)
    val_ba, val_auc = val_at.get("balanced_accuracy"), val.get("roc_auc")
    measured = _measured(result)
    if measured is None:
        h = (result.get("shift") or {}).get("headline")
        if h is None:
            return {"verdict": "label", "why": "no labels and no shift estimate: nothing says how the run does here; "
                                               "label some images (--label-budget K)"}
        if h["kind"] == "estimate":
            return {"verdict": "usable", "why": f"no labels, but the images cannot be told from validation's beyond "
                                                f"their class mix (domain AUC {h['domain_auc']:.2f}); expected "
                                                f"accuracy {h['accuracy']:.3f}"}
        k = h["label_budget"]
        if h["kind"] == "not_shown":
            return {"verdict": "not_shown", "why": f"{h['why']}; check it with labels before use (--label-budget {k})"}
        return {"verdict": "label", "why": f"{h['why']}: accuracy anywhere from {h['low']:.2f} to {h['high']:.2f}; "
                                           f"label {k} images (--label-budget {k}) to know"}
    ba, ba_ci, auc, auc_ci, source = measured
    evidence = (f"balanced accuracy {_ci(ba, ba_ci)} vs {val_ba:.3f} on validation"
                + (f", AUC {_ci(auc, auc_ci)} vs {val_auc:.3f}" if auc is not None and val_auc is not None else "")
                + f" ({source})")
    if auc is not None and (auc_ci or [auc, auc])[1] < NO_SKILL_AUC:
        return {"verdict": "not_shown", "why": f"the model barely separates the classes here: {evidence}; no threshold "
                                               f"fixes that; it has not been shown to work on these images"}
    if val_ba is None or (ba_ci or [ba, ba])[1] >= val_ba - TOLERANCE:
        return {"verdict": "usable", "why": f"no loss shown: {evidence}"}
    recal = result.get("recalibrated")
    if recal:
        after = recal.get("other_images", {}).get("recalibrated") or recal["estimated"]
        r_ba, r_ci = _value(after, "balanced_accuracy")
        if r_ba is not None and r_ba > ba + 0.01 and (r_ci or [r_ba, r_ba])[1] >= val_ba - TOLERANCE:
            return {"verdict": "recalibrate", "why": f"{evidence}; with the threshold re-chosen on the labels, "
                                                     f"balanced accuracy {_ci(r_ba, r_ci)}: use --recalibrate's rule"}
        return {"verdict": "retrain", "why": f"{evidence}; re-choosing the threshold on the labels gives "
                                             f"{_ci(r_ba, r_ci)}, still short of validation: train on labelled "
                                             f"target images (train --init RUN --data LABELLED)"}
    if auc is not None and val_auc is not None and (auc_ci or [auc, auc])[1] >= val_auc - RANKING_KEPT:
        return {"verdict": "recalibrate", "why": f"{evidence}: the ranking holds, the decision threshold does not; "
                                                 f"re-choose it on labelled images (--labels FILE --recalibrate)"}
    return {"verdict": "retrain", "why": f"{evidence}: the ranking itself is worse than on validation; train on "
                                         f"labelled target images (train --init RUN --data LABELLED)"}


def _measured(result: dict):
    """(balanced accuracy, its CI, AUC, its CI, where they come from), or None without labels."""
    if result.get("has_labels") and "accuracy" in result:
        at = result.get("at_threshold", result)
        ci = result.get("ci", {})
        return (at.get("balanced_accuracy"), ci.get("balanced_accuracy"), result.get("roc_auc"), ci.get("roc_auc"),
                f"measured on all {result['n']} labelled images")
    block = result.get("labelled")
    if isinstance(block, dict):
        ba, ba_ci = _value(block, "balanced_accuracy")
        auc, auc_ci = _value(block, "roc_auc")
        return ba, ba_ci, auc, auc_ci, f"estimated from {block['n_labels']} labelled images"
    return None


def _value(block: dict, key: str):
    """(value, CI) of a metric in an exact-metrics dict or an estimates block."""
    v = block.get(key)
    if isinstance(v, dict):
        return v.get("estimate"), v.get("ci")
    at = block.get("at_threshold", block)
    return at.get(key, v), block.get("ci", {}).get(key)


def _ci(value, ci) -> str:
    if value is None:
        return MISSING
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


VERDICT_WORDS = {"usable": "usable as it is", "recalibrate": "recalibrate", "retrain": "retrain with target labels",
                 "not_shown": "not shown to work", "label": "label images to know"}


def verdict_text(v: dict, name: str) -> str:
    return f"{name}: {VERDICT_WORDS[v['verdict']]} — {v['why']}."
