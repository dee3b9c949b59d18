"""Decode image files (JPEG, PNG, BMP, TIFF, DICOM) to uint8 arrays: once, in threads, cached on disk."""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tempfile
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from ..console import show_bars
from ..errors import DataError

MIN_SIDE, MAX_SIDE = 8, 12_000
DICOM_EXTENSIONS = {".dcm", ".dicom"}
CACHE_VERSION = 1   # bump when decoding changes, so that older caches are not reused
_RECENT: OrderedDict = OrderedDict()   # digest -> (pixels, kept, bad); results of recent load_images calls
_RECENT_MAX = 4


class ImageError(DataError):
    """One file that cannot be used as an image."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason

    def __reduce__(self):   # picklable across worker processes despite the two-argument constructor
        return type(self), (self.path, self.reason)


@dataclass
class LoadedImages:
    pixels: np.ndarray            # (N_ok, C, size, size) uint8; C = 1 if every image is grayscale, else 3
    kept: list[int]               # indices into `paths` of the rows in pixels
    bad: list[tuple[str, str]]    # (path, reason) of dropped files


def read_bytes(path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except IsADirectoryError:
        raise ImageError(path, "is a folder, not a file") from None
    except OSError as exc:
        raise ImageError(path, f"cannot read ({exc.strerror or exc})") from None
    if not data:
        raise ImageError(path, "empty file (0 bytes)")
    return data


def read_image(path) -> np.ndarray:
    """Decode one file to uint8 HxW (grayscale) or HxWx3 (RGB); raises ImageError with a short reason.

    Integer images wider than 8 bits (16-bit PNG/TIFF) are scaled by their own min..max range: X-ray
    detectors often fill only 10-12 of the 16 bits, so dividing by 65535 would give near-black images.
    DICOM: rescale slope/intercept, then the file's VOI LUT or window (else min..max), MONOCHROME1 inverted.
    """
    return decode_image(read_bytes(path), path)[0]


def decode_image(data: bytes, path, *, min_size: int | None = None) -> tuple[np.ndarray, str]:
    """read_image on bytes already read; also returns the source format, e.g. "PNG I;16" or
    "DICOM MONOCHROME1 12-bit". min_size lets JPEGs decode at a reduced scale still >= min_size a side."""
    if Path(path).suffix.lower() in DICOM_EXTENSIONS or data[128:132] == b"DICM":
        arr, fmt = _decode_dicom(data, path)
    else:
        arr, fmt = _decode_pil(data, path, min_size)
    if arr.ndim == 3 and _same_channels(arr):
        arr = np.asarray(Image.fromarray(arr).convert("L"))
        fmt += " (R=G=B)"
    return np.ascontiguousarray(arr), fmt


def _check_size(path, width, height) -> None:
    if max(width, height) > MAX_SIDE:
        raise ImageError(path, f"too large ({width}x{height} px; the limit is {MAX_SIDE} px a side)")
    if min(width, height) < MIN_SIDE:
        raise ImageError(path, f"too small ({width}x{height} px; need at least {MIN_SIDE} px a side)")


_BOMB = f"too large (over {Image.MAX_IMAGE_PIXELS * 2:,} pixels, PIL's decompression-bomb limit)"


def _decode_pil(data: bytes, path, min_size: int | None) -> tuple[np.ndarray, str]:
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(path, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError:
        raise ImageError(path, _BOMB) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(path, f"corrupt image ({exc})") from None
    _check_size(path, *img.size)
    fmt = f"{img.format} {img.mode}"
    if min_size and img.format == "JPEG":
        img.draft(None, (min_size, min_size))   # DCT-domain downscale: big JPEGs decode several times faster
    try:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)   # phone photos of films carry an EXIF rotation
        return _to_uint8(img), fmt
    except Image.DecompressionBombError:
        raise ImageError(path, _BOMB) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        raise ImageError(path, f"truncated or corrupt image ({exc})") from None


def _to_uint8(img: Image.Image) -> np.ndarray:
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode not in ("L", "RGB", "LA", "RGBA", "I", "F") and not img.mode.startswith("I;16"):
        img = img.convert("RGB")   # CMYK, YCbCr, LAB, ...
    arr = np.asarray(img)
    if img.mode in ("LA", "RGBA"):   # composite on black
        arr = ((arr[..., :-1].astype(np.uint16) * arr[..., -1:] + 127) // 255).astype(np.uint8)
        return arr[..., 0] if arr.shape[-1] == 1 else arr
    return arr if arr.dtype == np.uint8 else _scale(arr)


def _scale(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map lo..hi (default: the array's own min..max) linearly to 0..255."""
    arr = arr.astype(np.float32)
    lo = float(np.nanmin(arr)) if lo is None else lo
    hi = float(np.nanmax(arr)) if hi is None else hi
    if not hi > lo:
        return np.zeros(arr.shape, np.uint8)
    arr -= lo
    arr *= 255 / (hi - lo)
    return np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8)


def _same_channels(arr: np.ndarray) -> bool:
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    if np.array_equal(r, g) and np.array_equal(r, b):
        return True
    r = r.astype(np.int16)
    return bool(np.abs(r - g).max() <= 2 and np.abs(r - b).max() <= 2)


def _decode_dicom(data: bytes, path) -> tuple[np.ndarray, str]:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:   # pydicom raises many types on malformed files
        raise ImageError(path, f"not a readable DICOM file ({exc})") from None
    if "PixelData" not in ds:
        raise ImageError(path, "not a DICOM image (no PixelData)")
    _check_size(path, int(ds.get("Columns", 0)), int(ds.get("Rows", 0)))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    fmt = f"DICOM {photometric} {ds.get('BitsStored', '?')}-bit"
    try:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            ds.pixel_array_options(index=0)   # decode only the first frame
        arr = ds.pixel_array
    except Exception as exc:   # missing codec plugin, bad length, ... all mean "cannot decode this file"
        raise ImageError(path, f"cannot decode DICOM pixels ({exc})") from None
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return (arr if arr.dtype == np.uint8 else _scale(arr)), fmt   # colour: pydicom gives RGB
    arr = apply_modality_lut(arr, ds)
    lo = hi = None
    try:
        if not ds.get("VOILUTSequence") and "WindowCenter" in ds and "WindowWidth" in ds:
            with np.errstate(over="ignore"):   # the window's output range, found by windowing two extremes
                lo, hi = apply_voi_lut(np.array([-1e30, 1e30]), ds).tolist()
        arr = apply_voi_lut(arr, ds)
    except (ValueError, TypeError, IndexError, AttributeError):
        lo = hi = None   # unusable VOI tags: fall back to the image's own range
    arr = _scale(arr, lo, hi)
    return (255 - arr if photometric == "MONOCHROME1" else arr), fmt


def load_images(paths: list[Path], size: int, *, cache_dir: Path | None = None, skip_bad: bool = False,
                progress: bool = True, num_threads: int | None = None) -> LoadedImages:
    """Decode and resize (antialiased, no crop) every file to size x size, once.

    Results are found again by content: an in-process memory of recent calls, then
    cache_dir/images-{size}-{digest}.npy (digest over the sha1 of each file's bytes and size).
    The returned array may be shared with later identical calls: do not modify it in place.
    """
    paths = [Path(p) for p in paths]
    with ThreadPoolExecutor(num_threads or min(8, os.cpu_count() or 1)) as pool:
        hashed = list(tqdm(pool.map(_hash_file, paths), total=len(paths), desc="hash", disable=not show_bars(progress),
                           leave=False))
        digest = hashlib.sha256(f"v{CACHE_VERSION} {size}\n".encode()
                                + "\n".join(h or f"unreadable: {r}" for h, r in hashed).encode()).hexdigest()
        cache = Path(cache_dir) / f"images-{size}-{digest}" if cache_dir else None
        if digest in _RECENT:
            _RECENT.move_to_end(digest)
            result = _RECENT[digest]
        else:
            result = _read_cache(cache, len(paths), size)
            if result is None:
                result = _decode_all(paths, [r for _, r in hashed], size, pool, progress)
                if cache is not None:
                    _write_cache(cache, *result)
            _RECENT[digest] = result
            while len(_RECENT) > _RECENT_MAX:
                _RECENT.popitem(last=False)
    pixels, kept, bad_rows = result
    bad = [(str(paths[i]), reason) for i, reason in bad_rows]
    if bad and not skip_bad:
        raise unreadable_error(bad, len(paths))
    return LoadedImages(pixels, list(kept), bad)


def unreadable_error(bad: list[tuple[str, str]], total: int) -> DataError:
    """One line that counts the unreadable files and names the first three."""
    shown = "; ".join(f"{p}: {r}" for p, r in bad[:3])
    more = f"; ... (`transferlab check-data` lists all {len(bad)})" if len(bad) > 3 else ""
    return DataError(f"{len(bad)} of {total} images cannot be read ({shown}{more}); "
                     f"fix or remove them, or use --skip-bad")


def _hash_file(path: Path) -> tuple[str | None, str | None]:
    try:
        return hashlib.sha1(read_bytes(path)).hexdigest(), None
    except ImageError as exc:
        return None, exc.reason


def _load_resized(path: Path, size: int) -> tuple[np.ndarray | None, str | None]:
    try:
        arr, _ = decode_image(read_bytes(path), path, min_size=size)
    except ImageError as exc:
        return None, exc.reason
    if arr.shape[:2] != (size, size):
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))   # PIL: antialiased
    return arr, None


def _decode_all(paths, errors, size, pool, progress):
    """(pixels, kept, [(index, reason)]); starts 1-channel and widens to 3 at the first colour image."""
    out = np.zeros((len(paths), 1, size, size), np.uint8)
    bad = []
    jobs = pool.map(lambda p, e: (None, e) if e else _load_resized(p, size), paths, errors)
    for i, (arr, reason) in enumerate(tqdm(jobs, total=len(paths), desc="decode", disable=not show_bars(progress))):
        if reason:
            bad.append((i, reason))
            continue
        if arr.ndim == 3 and out.shape[1] == 1:
            out = np.repeat(out, 3, axis=1)
        out[i] = arr if arr.ndim == 2 else arr.transpose(2, 0, 1)
    dropped = {i for i, _ in bad}
    kept = [i for i in range(len(paths)) if i not in dropped]
    return (out[kept] if bad else out), kept, bad


def _read_cache(cache: Path | None, n: int, size: int):
    if cache is None or not cache.with_suffix(".npy").is_file():
        return None
    try:
        bad = [(int(i), str(r)) for i, r in json.loads(cache.with_suffix(".json").read_text())["bad"]]
        pixels = np.load(cache.with_suffix(".npy"))
    except (OSError, ValueError, KeyError, TypeError):
        return None   # unreadable or partial cache: decode again
    dropped = {i for i, _ in bad}
    kept = [i for i in range(n) if i not in dropped]
    if pixels.shape[0] != len(kept) or pixels.shape[2:] != (size, size):
        return None
    return pixels, kept, bad


def _write_cache(cache: Path, pixels: np.ndarray, kept: list[int], bad: list) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(cache.with_suffix(".json"), lambda f: f.write(json.dumps({"bad": bad}).encode()))
        _atomic_write(cache.with_suffix(".npy"), lambda f: np.save(f, pixels))
    except OSError as exc:   # the cache only saves time; a read-only or full disk must not stop a run
        warnings.warn(f"could not write the image cache in {cache.parent}: {exc}", stacklevel=3)


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
