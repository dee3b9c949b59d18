"""`export`: a finished run's model as ONNX or TorchScript, with the normalisation baked into the graph.

The exported graph takes `pixels`, float32 (N, 3, H, W) with values 0..255 (a grayscale image repeated on the
three channels), resized to H x W without cropping and, for a run trained with --preprocess equalize or clahe,
equalised as the sidecar's "preprocess" says (histogram equalisation is not part of the graph); it applies the run's ImageNet normalisation itself and
returns `probabilities`, float32 (N, classes) after softmax. The sidecar `<file>.json` documents all of this
plus the classes and how to decide: two classes at the threshold the run chose on validation for its positive
class, three or more by the most probable class.

An ensemble directory (`transferlab ensemble`, `study --ensemble`) exports as one graph: each member normalises
the pixels its own way, and the output is the mean of the members' probabilities, decided at the ensemble's
threshold. Its members must share one input size (an ensemble of members of different sizes is refused: resizing
inside the graph would not give the probabilities `predict` gives and the threshold was chosen on).
"""
from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

from .data.preprocess import describe as describe_preprocess
from .data.preprocess import of_run as preprocess_of
from .errors import TransferlabError
from .rundir import RunDir

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
OPSET = 17


def deployable(model, mean, std):
    """pixels 0..255 (N, 3, H, W) -> class probabilities: normalisation + model + softmax in one module."""
    from torch import nn

    from .data.transforms import normalize

    class Deployable(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixels):
            return self.model(normalize(pixels, mean, std)).softmax(1)

    return Deployable().eval()


def export(run_dir, format: str = "onnx", out=None) -> Path:
    """Write the run's model to `out` (default RUN_DIR/model.onnx or model.pt) and its sidecar `out`.json;
    returns the model file. ONNX is checked against PyTorch with onnxruntime when that is installed."""
    import torch

    from .rundir import write_json

    if format not in FORMATS:
        raise TransferlabError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if format == "onnx" and importlib.util.find_spec("onnx") is None:
        raise TransferlabError("ONNX export needs the onnx package: pip install onnx onnxruntime "
                               "(or use --format torchscript)")
    run = RunDir(run_dir)
    net, size, described = (_ensemble if run.is_ensemble() else _single)(run)
    metrics = run.read_metrics()
    out = Path(out) if out else run.path / FORMATS[format]
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, 3, size, size) * 255
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # tracer and deprecation chatter
        if format == "onnx":
            torch.onnx.export(net, (example,), str(out), input_names=["pixels"], output_names=["probabilities"],
                              dynamic_axes={"pixels": {0: "batch"}, "probabilities": {0: "batch"}},
                              opset_version=OPSET, dynamo=False)
        else:
            torch.jit.trace(net, example).save(str(out))
    check = _check_onnx(net, out, example) if format == "onnx" else None
    write_json(out.with_name(out.name + ".json"), {
        "file": out.name, "format": format, "opset": OPSET if format == "onnx" else None,
        "model": described.pop("model"), "run": str(run.path.resolve()),
        "input": {"name": "pixels", "dtype": "float32", "shape": ["batch", 3, size, size], "range": [0, 255],
                  "channels": "RGB; a grayscale image repeated on the 3 channels",
                  "resize": f"to {size}x{size} px, bilinear with antialiasing, no crop (aspect ratio not kept)"},
        **described,
        "output": {"name": "probabilities", "dtype": "float32", "shape": ["batch", len(metrics["classes"])],
                   "classes": metrics["classes"], "softmax": True},
        **decision_rule(metrics["classes"], metrics["positive_class"], metrics.get("threshold")),
        "max_abs_diff_vs_pytorch": check,
    })
    return out


def _single(run) -> tuple:
    """A run's model as a deployable module, its input size and what the sidecar says of it."""
    from .evaluation import load_model

    model, config = load_model(run)
    mean, std = config["model"]["mean"], config["model"]["std"]
    return deployable(model, mean, std), config["model"]["image_size"], {
        "model": config["model"]["name"], "preprocess": _preprocess_entry(preprocess_of(config)),
        "normalisation": {"baked_into_graph": True, "formula": "(pixels / 255 - mean) / std", "mean": mean, "std": std}}


def _ensemble(run) -> tuple:
    """An ensemble directory's members in one module that averages their probabilities."""
    from torch import nn

    parts = [_single(RunDir(m)) for m in run.members()]
    sizes = {size for _, size, _ in parts}
    if len(sizes) > 1:
        raise TransferlabError(f"{run.path}: its members take different input sizes ({', '.join(map(str, sorted(sizes)))} "
                               f"px), so one graph input cannot serve them all; export its runs one by one, or build "
                               f"the ensemble from runs trained at one --image-size")
    preprocessing = {d["preprocess"]["name"] for _, _, d in parts}
    if len(preprocessing) > 1:
        raise TransferlabError(f"{run.path}: its members were trained with different --preprocess "
                               f"({', '.join(sorted(preprocessing))}), so one graph input cannot serve them all; export "
                               f"its runs one by one")

    class MeanOfMembers(nn.Module):
        def __init__(self):
            super().__init__()
            self.members = nn.ModuleList(net for net, _, _ in parts)

        def forward(self, pixels):
            return sum(member(pixels) for member in self.members) / len(self.members)

    config = run.read_config()
    return MeanOfMembers().eval(), sizes.pop(), {
        "model": config["settings"]["model"], "preprocess": parts[0][2]["preprocess"],
        "ensemble": {"members": [{"run": str(RunDir(m).path.resolve()), "model": d["model"]}
                                 for m, (_, _, d) in zip(run.members(), parts)],
                     "combined": "mean of the members' probabilities (each after its own normalisation and softmax)"},
        "normalisation": {"baked_into_graph": True, "formula": "(pixels / 255 - mean) / std, per member",
                          "per_member": [d["normalisation"] for _, _, d in parts]}}


def _preprocess_entry(name: str) -> dict:
    """The sidecar's word on --preprocess: not in the graph, so the deployer applies it, after resizing."""
    return {"name": name, "baked_into_graph": False, "apply_before_the_graph": describe_preprocess(name)}


def decision_rule(classes: list[str], positive_class: str | None, threshold: float | None) -> dict:
    """The sidecar's decision keys: binary problems name their positive class and validation threshold."""
    if positive_class is None or threshold is None:
        return {"positive_class": None, "threshold": None,
                "decision": f"argmax: the most probable of the {len(classes)} classes (no threshold)"}
    negative = next(c for c in classes if c != positive_class)
    return {"positive_class": positive_class, "threshold": threshold, "decision": "threshold",
            "threshold_rule": f"predict {positive_class} when probabilities[{classes.index(positive_class)}] >= "
                              f"threshold (chosen on validation), else {negative}"}


def _check_onnx(net, path: Path, example) -> float | None:
    """Largest difference between onnxruntime's and PyTorch's probabilities on `example` (None: no onnxruntime)."""
    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"pixels": example.numpy()})[0]
    with torch.no_grad():
        want = net(example).numpy()
    diff = float(abs(got - want).max())
    if diff > 1e-4:
        raise TransferlabError(f"{path}: the exported model differs from PyTorch by {diff:.2g} (more than 1e-4)")
    return diff


# --- command line -------------------------------------------------------------------------------------------

def add_export_arguments(subparsers) -> None:
    p = subparsers.add_parser("export", help="a run's model as ONNX or TorchScript, for deployment",
                              description="Export a finished run's model with normalisation and softmax in the "
                                          "graph: input float32 pixels 0..255 (N, 3, H, W), output class "
                                          "probabilities. A sidecar <file>.json records size, mean/std, classes "
                                          "and the decision rule (two classes: the validation-chosen threshold).")
    p.add_argument("run", help="run directory written by `transferlab train` (or a study's runs/NAME), or an "
                               "ensemble directory (`transferlab ensemble`, a study's ensemble-topK): one graph "
                               "averaging its members' probabilities; its members must share one input size")
    p.add_argument("--format", default="onnx", choices=tuple(FORMATS), help="onnx or torchscript")
    p.add_argument("--out", help="model file to write (default: RUN/model.onnx or RUN/model.pt)")


def run_export(args) -> None:
    path = export(args.run, args.format, args.out)
    preprocess = json.loads(path.with_name(path.name + ".json").read_text())["preprocess"]["name"]
    first = "" if preprocess == "none" else f"; apply --preprocess {preprocess} before it, as the sidecar says"
    print(f"wrote {path} and {path.name}.json (input: float32 pixels 0..255, normalisation in the graph{first})")
