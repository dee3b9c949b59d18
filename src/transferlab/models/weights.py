"""Offline lookup of ImageNet weight files, loaded safely (``torch.load(weights_only=True)``).

A torchvision weights file is searched, under the name torchvision downloads it as (e.g. resnet18-f37072fd.pth), in:
the ``weights_dir`` argument (--weights-dir), ``$TRANSFERLAB_WEIGHTS_DIR``, then torch's own cache
``torch.hub.get_dir()/checkpoints`` (= ``$TORCH_HOME/hub/checkpoints``). Only if it is in none of them is
torchvision's download tried (so it keeps working with internet); offline it fails within a fraction of a second
(DNS error), and a short HEAD probe keeps a firewalled network from hanging it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import Request, urlopen

import torch
import torch.hub

from ..errors import ModelError

WEIGHTS_DIR_ENV = "TRANSFERLAB_WEIGHTS_DIR"
_PROBE_TIMEOUT_S = 3.0


def hub_checkpoints_dir() -> Path:
    """Where torchvision downloads weights: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def search_dirs(weights_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for weight files, in order."""
    dirs = [weights_dir, os.environ.get(WEIGHTS_DIR_ENV) or None, hub_checkpoints_dir()]
    return [Path(d).expanduser() for d in dirs if d is not None]


def _file_name(spec_or_file_name) -> str:
    """A file name from a ModelSpec (.weights_file), a torchvision weights enum member (.url) or a str."""
    if isinstance(spec_or_file_name, (str, Path)):
        return Path(spec_or_file_name).name
    if getattr(spec_or_file_name, "weights_file", None):
        return spec_or_file_name.weights_file
    return Path(urlparse(spec_or_file_name.url).path).name


def find_weights_file(spec_or_file_name, weights_dir: str | Path | None = None) -> Path | None:
    """The first existing file of that name in `search_dirs(weights_dir)`, or None."""
    name = _file_name(spec_or_file_name)
    for folder in search_dirs(weights_dir):
        if (folder / name).is_file():
            return folder / name
    return None


def load_state_dict_file(path: str | Path) -> dict:
    """A state_dict from `path`, refusing anything but tensors and plain containers (weights_only=True)."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, truncated file, or a pickle that weights_only refuses
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ModelError(f"cannot load weights file {path}: {reason}") from None
    if not isinstance(state_dict, Mapping):
        raise ModelError(f"weights file {path} holds a {type(state_dict).__name__}, not a state_dict")
    return state_dict


def load_torchvision_weights(weights_enum_member, weights_dir: str | Path | None = None) -> dict:
    """The state_dict of a torchvision weights enum member: from a local file, else torchvision's download."""
    path = find_weights_file(weights_enum_member, weights_dir)
    if path is not None:
        return load_state_dict_file(path)
    try:
        return _download(weights_enum_member)
    except (OSError, RuntimeError, ValueError) as e:  # URLError, timeouts (OSErrors); hash mismatch
        name, url = _file_name(weights_enum_member), weights_enum_member.url
        where = f"--weights-dir, ${WEIGHTS_DIR_ENV} or {hub_checkpoints_dir()}"
        raise ModelError(f"weights for {_model_name(weights_enum_member)} not found offline: put {name} (from {url}) "
                         f"in {where}, or use --weights none for random initialisation") from e


def _model_name(weights_enum_member) -> str:
    """ResNet18_Weights.IMAGENET1K_V1 -> resnet18."""
    return type(weights_enum_member).__name__.removesuffix("_Weights").lower()


def _download(weights_enum_member) -> dict:
    """torchvision's own download into hub_checkpoints_dir(), then a safe load of the file. torch.hub sets no
    timeout, so a quick HEAD request (proxy-aware, like the download) first makes an unreachable host fail fast."""
    urlopen(Request(weights_enum_member.url, method="HEAD"), timeout=_PROBE_TIMEOUT_S).close()
    return weights_enum_member.get_state_dict(progress=True, check_hash=True, weights_only=True,
                                              map_location="cpu")
