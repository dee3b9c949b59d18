"""timm models, named ``timm:NAME[.TAG]`` (e.g. ``timm:convnext_tiny.fb_in22k_ft_in1k``, ``timm:resnet50.a1_in1k``).

timm states every fact itself: the architecture (``timm.create_model``), the weights' preprocessing
(``pretrained_cfg``: input size, mean/std, interpolation, crop) and the Hugging Face Hub repository of the
weights. ``timm:NAME`` without a tag means timm's default tag for NAME. The weights are looked up offline first
(weights.load_hub_weights). timm publishes its ImageNet results in its repository's ``results/`` tables, not
in the package, so acc@1/acc@5 stay blank and the spec says so.
"""
from __future__ import annotations

import difflib
import math
from functools import lru_cache
from pathlib import Path

from torch import nn

from ..errors import ModelError
from .spec import ModelSpec
from .weights import load_hub_weights, load_into

PREFIX = "timm:"
METRICS_SOURCE = ("timm publishes ImageNet accuracy in its repository's results/ tables "
                  "(github.com/huggingface/pytorch-image-models), not in the package: left blank")


def owns(name: str) -> bool:
    return name.startswith(PREFIX)


@lru_cache(maxsize=1)
def names() -> tuple[str, ...]:
    """Every pretrained timm weights, as timm:NAME.TAG."""
    import timm

    return tuple(PREFIX + n for n in timm.list_pretrained())


def _pretrained_cfg(name: str):
    """timm's PretrainedCfg of `name` (timm:NAME or timm:NAME.TAG); ModelError for an unknown name or tag."""
    import timm
    from timm.models import get_arch_pretrained_cfgs, get_pretrained_cfg

    bare = name.removeprefix(PREFIX)
    arch, _, tag = bare.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"did you mean: {', '.join(PREFIX + c for c in close)}?" if close else \
            "see `transferlab models --source timm --filter 'PATTERN'`"
        raise ModelError(f"unknown model '{name}': timm has no architecture '{arch}'; {hint}")
    tags = [t.partition(".")[2] for t in get_arch_pretrained_cfgs(arch)]
    if tag and tag not in tags:
        raise ModelError(f"unknown model '{name}': timm has no weights tag '{tag}' for {arch}; choose one of: "
                         f"{', '.join(tags) or '(none: use --weights none)'}")
    return get_pretrained_cfg(bare)


@lru_cache(maxsize=None)
def spec(name: str, weights: str = "default") -> ModelSpec:
    if weights not in ("default", "none"):
        raise ModelError(f"unknown weights '{weights}' for {name}; choose one of: default, none (a timm weights "
                         f"tag goes in the name: {PREFIX}NAME.TAG)")
    cfg = _pretrained_cfg(name)
    size = cfg.input_size[-1]
    return ModelSpec(
        name=name, source="timm", input_size=size, mean=tuple(cfg.mean), std=tuple(cfg.std),
        weights_name=cfg.hf_hub_id, weights_file=f"{cfg.hf_hub_id}/model.safetensors" if cfg.hf_hub_id else None,
        weights_url=f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url,
        acc1=None, acc5=None, gflops=None, file_size_mb=None, num_params=None, metrics_source=METRICS_SOURCE,
        resize_size=math.floor(size / cfg.crop_pct), interpolation=cfg.interpolation)


def build(name: str, weights: str, weights_dir: str | Path | None) -> nn.Module:
    """timm's model for `name` with the classifier of its weights (e.g. 21,841 classes for in22k), pretrained
    unless weights == "none" (the same architecture either way)."""
    import timm

    cfg = _pretrained_cfg(name)
    model = timm.create_model(name.removeprefix(PREFIX), pretrained=False)
    if weights == "none":
        return model
    if not cfg.hf_hub_id or cfg.custom_load or cfg.hf_hub_filename:
        raise ModelError(f"{name}: timm has no weights on the Hugging Face Hub in its own format for this tag "
                         f"(source: {cfg.url or cfg.hf_hub_filename or 'none'}); choose another tag, or use "
                         f"--weights none for random initialisation")
    state_dict, file_name = load_hub_weights(cfg.hf_hub_id, name, weights_dir)
    load_into(model, state_dict, name, file_name)
    return model
