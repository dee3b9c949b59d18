"""Section E, each --external set: every run's result beside the label-free estimates, what to do, the errors."""
from __future__ import annotations

from ...analysis.decision import verdict_text
from ...analysis.shift import share_classes
from ...formatting import MISSING, fmt
from ..blocks import NOT_APPLICABLE, Section, Table, error_gallery, fmt_ci


def _headline_cell(h: dict | None) -> str:
    if not h:
        return NOT_APPLICABLE
    if h["kind"] == "estimate":
        return f"{h['accuracy']:.3f}"
    if h["kind"] == "range":
        return f"{h['low']:.2f}–{h['high']:.2f} (label {h['label_budget']})"
    return f"≤ {h['high']:.2f}, not shown to work (label {h['label_budget']})"


def external_subsection(s: Section, name: str, ext: dict, a: dict) -> None:
    """One external set: every run's result with the label-free estimates beside the truth, findings, errors."""
    results = ext["results"]
    first = next(iter(results.values()))
    classes = first["classes"]
    s.h3(f"External set: {name}")
    s.p(f"{first['n']} images from {first['data']} ({first['layout']}); every image scored, no carving"
        + ("; labelled, so each label-free estimate stands beside the truth." if first.get("has_labels", first.get("labelled") is True)
           else "; unlabelled: predictions and label-free estimates only.")
        + (f" {first['n_unreadable']} unreadable files skipped." if first["n_unreadable"] else ""))
    shown = share_classes(classes, first["positive_class"])
    adapt = list(first.get("adapted", {}))
    columns = ["run", "accuracy [95% CI]", "balanced acc.", "AUC"]
    columns += [f"{c} share: true / EM [CI] / BBSE" for c in shown]
    columns += ["domain AUC (p)", "accuracy without labels", "estimators: ATC / DoC / label-shift / runs' agreement"]
    columns += [f"adapt {m}: acc. / bal. acc." for m in adapt]
    rows = []
    for run_name, r in results.items():
        sh_, truth = r.get("shift"), r.get("truth") or {}
        at = r.get("at_threshold", r)
        row = [run_name, fmt_ci(at.get("accuracy"), r.get("ci", {}).get("accuracy")) if "accuracy" in r else MISSING,
               fmt(at.get("balanced_accuracy")), fmt(r.get("roc_auc"))]
        for c in shown:
            if sh_:
                em = sh_["prevalence"]["em"][c]
                row.append(f"{fmt(truth.get('prevalence', {}).get(c))} / {fmt(em['estimate'])} "
                           f"[{em['ci'][0]:.2f}, {em['ci'][1]:.2f}] / {fmt(sh_['prevalence']['bbse'][c]['estimate'])}")
            else:
                row.append(MISSING)
        d = (sh_ or {}).get("domain") or {}
        row.append(f"{fmt(d.get('auc'), '.2f')} ({fmt(d.get('p_value'), '.2g')})" if d.get("auc") is not None else MISSING)
        acc = (sh_ or {}).get("accuracy", {})
        row.append(_headline_cell((sh_ or {}).get("headline")))
        row.append(" / ".join(fmt(acc.get(m)) for m in ("atc", "doc", "label_shift", "gde")))
        for m in adapt:
            x = r.get("adapted", {}).get(m, {})   # an ensemble's row has none (adaptation is per model)
            xa = x.get("at_threshold", x)
            row.append(f"{fmt(xa.get('accuracy'))} / {fmt(xa.get('balanced_accuracy'))}")
        rows.append(row)
    s.table(Table(columns, rows,
                  "Metrics at each run's validation-chosen decision rule. Shares: the truth (from the labels, when "
                  "there are any) beside two estimates made without them, EM (Saerens et al. 2002) and BBSE (Lipton "
                  "et al. 2018), both assuming pure label shift. Domain AUC: a classifier on backbone features "
                  "telling these images from the validation images (0.5 = indistinguishable). Accuracy without labels: "
                  "a number only where the domain classifier cannot tell the images from validation's (ATC); else "
                  "the range the estimators could mean, or only an upper end where the model has not been shown to "
                  "work. Estimators: ATC (Garg et al. 2022), DoC, EM prior × validation recall, and the runs' "
                  "agreement with each other (GDE, Jiang et al. 2022)."))
    decision = ext.get("next_step")
    if decision:
        s.p(f"What to do ({ext['best_run']}, the run chosen on validation) — {verdict_text(decision, name)}")
    s.findings([f"{ext['best_run']}, the run chosen on validation: {f}" if i == 0 else f
                for i, f in enumerate(ext["findings"])])
    if ext["gallery"] or first.get("has_labels", first.get("labelled") is True):
        error_gallery(s, ext["gallery"], f"{ext['best_run']} on {name}", name, first["positive_class"])
