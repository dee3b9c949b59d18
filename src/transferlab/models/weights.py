"""Offline lookup of ImageNet weight files, loaded safely (``torch.load(weights_only=True)`` or safetensors).

A torchvision weights file is searched, under the name torchvision downloads it as (e.g. resnet18-f37072fd.pth), in:
the ``weights_dir`` argument (--weights-dir), ``$TRANSFERLAB_WEIGHTS_DIR``, then torch's own cache
``torch.hub.get_dir()/checkpoints`` (= ``$TORCH_HOME/hub/checkpoints``). Only if it is in none of them is
torchvision's download tried (so it keeps working with internet); offline it fails within a fraction of a second
(DNS error), and a short HEAD probe keeps a firewalled network from hanging it.

Weights on the Hugging Face Hub (timm's) are searched as the Hub repository's own folder,
``DIR/REPO_ID/model.safetensors`` (or ``pytorch_model.bin``; what ``hf download REPO_ID --local-dir DIR/REPO_ID``
writes) in --weights-dir and ``$TRANSFERLAB_WEIGHTS_DIR``, then in the Hugging Face cache
(``huggingface_hub.try_to_load_from_cache``). Only then, unless ``HF_HUB_OFFLINE`` is set, the Hub download is
tried, after the same short probe (huggingface_hub itself retries an unreachable host for about 45 s).
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
HUB_FILES = ("model.safetensors", "pytorch_model.bin")   # a Hub repository's weights, safetensors first
_PROBE_TIMEOUT_S = 3.0


def hub_checkpoints_dir() -> Path:
    """Where torchvision downloads weights: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def user_dirs(weights_dir: str | Path | None = None) -> list[Path]:
    """--weights-dir, then $TRANSFERLAB_WEIGHTS_DIR (those set)."""
    dirs = [weights_dir, os.environ.get(WEIGHTS_DIR_ENV) or None]
    return [Path(d).expanduser() for d in dirs if d is not None]


def search_dirs(weights_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for torchvision weight files, in order."""
    return [*user_dirs(weights_dir), hub_checkpoints_dir()]


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


def load_weights_file(path: str | Path) -> dict:
    """A state_dict from a .safetensors file, or from a torch file with weights_only=True."""
    if Path(path).suffix != ".safetensors":
        return load_state_dict_file(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ModelError(f"cannot load weights file {path}: {str(e).strip()[:160]}") from None


def load_into(model: torch.nn.Module, state_dict: dict, name: str, file_name: str) -> None:
    """model.load_state_dict(state_dict), a file of the wrong model as one ModelError line."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        reason = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise ModelError(f"weights file {file_name} does not fit {name}: {reason[:200]}") from None


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


# --- Hugging Face Hub (timm) -------------------------------------------------------------------------------

def hub_offline() -> bool:
    """HF_HUB_OFFLINE, read now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants
    return constants.HF_HUB_OFFLINE or constants._is_true(os.environ.get("HF_HUB_OFFLINE"))


def find_hub_weights(repo_id: str, weights_dir: str | Path | None = None) -> Path | None:
    """The weights file of Hub repository `repo_id` found offline (see the module docstring), or None."""
    from huggingface_hub import try_to_load_from_cache

    for folder in user_dirs(weights_dir):
        for name in HUB_FILES:
            if (folder / repo_id / name).is_file():
                return folder / repo_id / name
    for name in HUB_FILES:
        cached = try_to_load_from_cache(repo_id, name)
        if isinstance(cached, str):       # not None, nor the "known to be missing" marker
            return Path(cached)
    return None


def load_hub_weights(repo_id: str, model_name: str, weights_dir: str | Path | None = None) -> tuple[dict, str]:
    """(state_dict, file name) of Hub repository `repo_id`: found offline, else downloaded into the Hugging Face
    cache unless HF_HUB_OFFLINE is set; when neither works, one line saying how to get it."""
    path = find_hub_weights(repo_id, weights_dir)
    if path is None and not hub_offline():
        try:
            path = _download_hub(repo_id)
        except Exception as e:   # DNS/connection errors and the Hub client's own (their types vary by version)
            reason = f"the Hub is unreachable ({type(e).__name__})"
            raise ModelError(_hub_missing(repo_id, model_name, weights_dir, reason)) from e
    if path is None:
        raise ModelError(_hub_missing(repo_id, model_name, weights_dir, "HF_HUB_OFFLINE is set"))
    return load_weights_file(path), path.name


def hub_download_command(repo_id: str, folder: str | Path) -> str:
    return f"hf download {repo_id} --local-dir {Path(folder) / repo_id}"


def _hub_missing(repo_id: str, model_name: str, weights_dir, reason: str) -> str:
    from huggingface_hub import constants

    dirs = user_dirs(weights_dir)
    folder = dirs[0] if dirs else Path("DIR")
    use = "" if dirs else f" and pass --weights-dir DIR (or set ${WEIGHTS_DIR_ENV}=DIR)"
    return (f"weights for {model_name} (Hugging Face Hub repo {repo_id}) not found in --weights-dir, "
            f"${WEIGHTS_DIR_ENV} or the Hugging Face cache {constants.HF_HUB_CACHE}, and {reason}: on a machine with "
            f"internet run `{hub_download_command(repo_id, folder)}`{use}, or use --weights none for random "
            f"initialisation")


def _download_hub(repo_id: str) -> Path:
    """The Hub's own download into its cache: model.safetensors, else pytorch_model.bin."""
    from huggingface_hub import constants, errors, hf_hub_download

    not_on_hub = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)   # name since 1.0
    urlopen(Request(f"{constants.ENDPOINT}/{repo_id}", method="HEAD"), timeout=_PROBE_TIMEOUT_S).close()
    for name in HUB_FILES[:-1]:
        try:
            return Path(hf_hub_download(repo_id, name))
        except not_on_hub:
            continue
    return Path(hf_hub_download(repo_id, HUB_FILES[-1]))
