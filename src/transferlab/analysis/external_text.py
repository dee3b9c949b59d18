"""What `evaluate` says about one set, and what a study's report reads of it: the printed summary, the findings
of each adaptation, and the results and errors each run wrote (eval-NAME.json, predictions-NAME.csv)."""
from __future__ import annotations

from pathlib import Path

from ..formatting import fmt
from ..rundir import RunDir, read_csv
from .decision import verdict_text
from .shift import share_classes


def summary_lines(result: dict) -> list[str]:
    """What `transferlab evaluate` prints: a few lines, then where the JSON is. The notes (images left out or
    unreadable, classes the run does not know) are said here once; `evaluate` itself prints none."""
    out = [f"{result['name']}: {result['n']} images from {result['data']} ({result['layout']}); scored "
           f"{result['scored']}"]
    out += [f"note: {n}" for n in result["notes"]]
    if "next_step" in result:
        out.append("what to do: " + verdict_text(result["next_step"], result["name"]))
    rows = [("as trained", result)] + [(f"adapt {m}", r) for m, r in result.get("adapted", {}).items()]
    rows += [(f"TTA x{result['tta']['views']}", result["tta"])] if "tta" in result else []
    for label, r in rows:
        if "accuracy" not in r:
            out.append(f"{label:>16}: predicted {_shares(r['predicted_share'], result, '.1%')} (no labels)")
            continue
        at = r.get("at_threshold", r)
        ci = r.get("ci", {})
        t = at.get("threshold")
        out.append(f"{label:>16}: accuracy {at['accuracy']:.3f} {_ci(ci.get('accuracy'))}  balanced "
                   f"{_num(at.get('balanced_accuracy'))}  AUC {_num(r.get('roc_auc'))} {_ci(ci.get('roc_auc'))}"
                   + (f"  (threshold {t:.3f}, chosen on validation)" if t is not None and "at_threshold" in r else ""))
    out += labelled_lines(result)
    out += result.get("findings", [])
    return out


def labelled_lines(result: dict) -> list[str]:
    """The label budget's plan, the estimates from the labels, and the recalibrated rule, a line each."""
    out = []
    if "label_budget" in result:
        b = result["label_budget"]
        out.append(f"label budget: {b['budget']} images chosen (stratified by predicted class and confidence, "
                   f"{b['strata']} strata); fill in the label column of {b['file']}, then run evaluate again with "
                   f"--labels {b['file']} [--recalibrate]")
    block = result.get("labelled")
    if isinstance(block, dict):
        out.append(f"{'from labels':>16}: " + _estimates(block) + f"  ({block['n_labels']} labelled images of "
                   f"{block['n']}; 95% intervals for the whole set)")
    before = result.get("versus_init")
    if before:
        a, b = _at(before), _at(result)
        out.append(f"{'before --init':>16}: accuracy {a['accuracy']:.3f} -> {b['accuracy']:.3f}, balanced "
                   f"{_num(a.get('balanced_accuracy'))} -> {_num(b.get('balanced_accuracy'))}, AUC "
                   f"{_num(before.get('roc_auc'))} -> {_num(result.get('roc_auc'))} (McNemar p = "
                   f"{before['mcnemar']['p_value']:.3g}; {before['run']})")
    recal = result.get("recalibrated")
    if recal:
        t = recal.get("threshold")
        out.append(f"{'recalibrated':>16}: " + _estimates(recal["estimated"])
                   + (f"  (threshold {t:.3f}" if t is not None else "  (") + f", temperature {recal['temperature']:.2f}, "
                   f"chosen on the labels, cross-fitted)")
        m = recal["mcnemar_on_labelled"]
        out.append(f"{'':>16}  on the labelled images, recalibrated vs as trained: only recalibrated right on "
                   f"{m['only_a_correct']}, only as trained on {m['only_b_correct']} (McNemar p = {m['p_value']:.3g})")
        other = recal.get("other_images")
        if other:
            a, b = other["unadapted"], other["recalibrated"]
            out.append(f"{'':>16}  on the other {other['n']} images (labelled in the set): accuracy "
                       f"{_at(a)['accuracy']:.3f} -> {_at(b)['accuracy']:.3f}, balanced "
                       f"{_num(_at(a).get('balanced_accuracy'))} -> {_num(_at(b).get('balanced_accuracy'))} "
                       f"(McNemar p = {other['mcnemar']['p_value']:.3g})")
    return out


def _at(r: dict) -> dict:
    return r.get("at_threshold", r)


def _estimates(block: dict) -> str:
    parts = []
    for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced"), ("sensitivity", "sensitivity"),
                       ("specificity", "specificity"), ("roc_auc", "AUC")):
        v = block.get(key)
        if v and v.get("estimate") is not None:
            parts.append(f"{label} {v['estimate']:.3f} {_ci(v['ci'])}")
    return "  ".join(parts)


def _num(value) -> str:
    return fmt(value)


def _ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


# --- a study's runs on its external sets (report section E) -------------------------------------------------------

def external_results(run_dirs: list[Path], sets: list[dict]) -> dict[str, dict[str, dict]]:
    """{set name: {run name: eval-<name>.json}} for the study's --external sets."""
    out = {}
    for s in sets:
        found = {Path(p).name: result for p in run_dirs
                 if (result := RunDir(p).read_evaluation(s["name"])) is not None}
        if found:
            out[s["name"]] = found
    return out


def external_errors(run_dir: Path, name: str, k: int = 8) -> list[dict]:
    """The k labelled images of an external set the run got most confidently wrong (predictions-<name>.csv)."""
    rows = [r for r in read_csv(Path(run_dir) / f"predictions-{name}.csv") if r["label"] and r["predicted"] != r["label"]]
    for r in rows:
        r["confidence"] = float(r[f"prob_{r['predicted']}"])
    return sorted(rows, key=lambda r: -r["confidence"])[:k]


def adaptation_findings(result: dict) -> list[str]:
    """One sentence per adaptation: what it changed, measured with the labels where there are any."""
    out = []
    for method, r in result.get("adapted", {}).items():
        if "accuracy" in r and "accuracy" in result:
            before, after = result.get("at_threshold", result), r.get("at_threshold", r)
            delta = after["balanced_accuracy"] - before["balanced_accuracy"] if after.get("balanced_accuracy") is not None \
                and before.get("balanced_accuracy") is not None else None
            verdict = ("no change" if delta is None or abs(delta) < 0.005 else "helps" if delta > 0 else "hurts")
            domain = (result.get("shift") or {}).get("domain") or {}
            if method.endswith("prior") and domain.get("distinguishable"):
                verdict += (" (the prior correction assumes pure label shift, which the domain classifier rejects "
                            "for this set)")
            out.append(f"--adapt {method}: accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}, balanced "
                       f"accuracy {_num(before.get('balanced_accuracy'))} -> {_num(after.get('balanced_accuracy'))}, AUC "
                       f"{_num(result.get('roc_auc'))} -> {_num(r.get('roc_auc'))}: {verdict} here.")
        else:
            out.append(f"--adapt {method}: predicted {_shares(r['predicted_share'], result, '.0%')} (no labels to "
                       f"measure the effect).")
    return out


def _shares(predicted: dict, result: dict, spec: str) -> str:
    """Predicted class shares, of the classes shift.share_classes names: 'PNEUMONIA 61.0%'."""
    shown = share_classes(result["classes"], result.get("positive_class"))
    return ", ".join(f"{c} {predicted[c]:{spec}}" for c in shown)
