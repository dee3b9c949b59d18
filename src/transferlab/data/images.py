"""Decode image files (JPEG, PNG, BMP, TIFF, DICOM) to uint8 arrays: once, in worker processes, cached on disk as
a .npy file that is memory-mapped when read."""
from __future__ import annotations

import hashlib
import io
import json
import mmap
import multiprocessing
import os
import shutil
import struct
import sys
import tempfile
import warnings
from collections import OrderedDict, deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..console import progress_bar
from ..errors import DataError, TransferlabError
from .preprocess import preprocess as normalise_intensity

MIN_SIDE, MAX_SIDE = 8, 12_000
DICOM_EXTENSIONS = {".dcm", ".dicom"}
HASH_CHUNK = 1024   # files hashed per batch of threads
UNREADABLE = "unreadable: "
CACHE_VERSION = 1   # bump when decoding changes, so that older caches are not reused
_RECENT: OrderedDict = OrderedDict()   # digest -> (pixels, kept, bad); results of recent load_images calls
_RECENT_MAX = 4
PARALLEL_MIN = 256    # fewer images decode in threads: starting worker processes would cost more than it saves
DECODE_CHUNK = 32     # images per task sent to a worker process


class ImageError(DataError):
    """One file that cannot be used as an image."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason

    def __reduce__(self):   # picklable across worker processes despite the two-argument constructor
        return type(self), (self.path, self.reason)


@dataclass
class LoadedImages:
    pixels: np.ndarray            # (N_ok, C, size, size) uint8, np.memmap when cached; C = 1 if every image is grayscale, else 3
    kept: list[int]               # indices into `paths` of the rows in pixels
    bad: list[tuple[str, str]]    # (path, reason) of dropped files


@dataclass(frozen=True)
class MappedRows:
    """Where a memory-mapped array (or a contiguous slice of one) lies in its file: what a DataLoader worker
    process needs to map it again, instead of a pickled copy of every pixel."""
    filename: str
    offset: int
    shape: tuple
    dtype: str

    @classmethod
    def of(cls, arr) -> MappedRows | None:
        """None unless `arr` is a non-empty, C-contiguous view of a file mapped by np.memmap / np.load(mmap_mode)."""
        if not isinstance(arr, np.memmap) or not arr.filename or not arr.size or not arr.flags.c_contiguous:
            return None
        base = arr
        while isinstance(base, np.ndarray):
            base = base.base
        if not isinstance(base, mmap.mmap):
            return None
        mapped_at = np.frombuffer(base, np.uint8).__array_interface__["data"][0]
        file_start = arr.offset - arr.offset % mmap.ALLOCATIONGRANULARITY   # where numpy's map begins
        offset = file_start + arr.__array_interface__["data"][0] - mapped_at
        return cls(str(arr.filename), offset, tuple(arr.shape), arr.dtype.str)

    def open(self) -> np.memmap:
        return np.memmap(self.filename, dtype=np.dtype(self.dtype), mode="r", offset=self.offset, shape=self.shape)


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


def load_images(paths: list[Path], size: int, *, preprocess: str = "none", cache_dir: Path | None = None,
                skip_bad: bool = False, progress: bool = True, num_threads: int | None = None,
                processes: int | None = None) -> LoadedImages:
    """Decode and resize (antialiased, no crop) every file to size x size, then apply --preprocess
    (data.preprocess), once.

    Results are found again by content: an in-process memory of recent calls, then
    cache_dir/images-{size}-{digest}.npy (digest over the sha1 of each file's bytes, size and preprocess). With a
    cache_dir the pixels are that file, memory-mapped read-only, so a dataset larger than memory never has to fit in it;
    without one they are an ordinary array. Either way: do not modify them in place.
    Decoding runs in `processes` worker processes (default: one per CPU, up to 8, from PARALLEL_MIN images on;
    1: threads in this process); hashing in `num_threads` threads.
    """
    paths = [p if isinstance(p, Path) else Path(p) for p in paths]   # the caller's own objects, not copies
    hashed = _hash_files(paths, num_threads, progress)
    pipeline = f"v{CACHE_VERSION} {size}" + (f" {preprocess}" if preprocess != "none" else "")
    digest = hashlib.sha256(f"{pipeline}\n".encode() + "\n".join(hashed).encode()).hexdigest()
    cache = Path(cache_dir) / f"images-{size}-{digest}" if cache_dir else None
    if digest in _RECENT:
        _RECENT.move_to_end(digest)
        result = _RECENT[digest]
    else:
        result = _read_cache(cache, len(paths), size)
        if result is None:
            errors = [h.removeprefix(UNREADABLE) if h.startswith(UNREADABLE) else None for h in hashed]
            result = _decode_to_cache(paths, errors, size, cache, processes, num_threads, progress, preprocess)
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


def _hash_files(paths: list[Path], num_threads: int | None, progress: bool) -> list[str]:
    """_hash_file of every path, in threads, HASH_CHUNK files at a time: pool.map over all of them at once would
    hold a Future per file (about 2 kB each: 100 MB for 50,000 images, measured by benchmarks/scale.py). One
    string per file, not a tuple: the list lives as long as the decoding."""
    hashed = []
    with ThreadPoolExecutor(num_threads or min(8, os.cpu_count() or 1)) as pool, \
            progress_bar(progress=progress, total=len(paths), desc="hash", leave=False) as bar:
        for start in range(0, len(paths), HASH_CHUNK):
            hashed += pool.map(_hash_file, paths[start:start + HASH_CHUNK])
            bar.update(len(hashed) - bar.n)
    return hashed


def _hash_file(path: Path) -> str:
    """The sha1 of the file's bytes, or UNREADABLE + the reason."""
    try:
        return hashlib.sha1(read_bytes(path)).hexdigest()
    except ImageError as exc:
        return UNREADABLE + exc.reason


def _load_resized(path: Path, size: int) -> tuple[np.ndarray | None, str | None]:
    try:
        arr, _ = decode_image(read_bytes(path), path, min_size=size)
    except ImageError as exc:
        return None, exc.reason
    if arr.shape[:2] != (size, size):
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))   # PIL: antialiased
    return arr, None


def _decode_chunk(paths: list[Path], errors: list[str | None], size: int) -> list[tuple]:
    """_load_resized over a chunk of files, in a worker process."""
    return [(None, e) if e else _load_resized(p, size) for p, e in zip(paths, errors)]


def _decoded(paths, errors, size, processes, num_threads):
    """(array or None, reason or None) per file, in order: in worker processes, with at most a few chunks in
    flight (so that memory does not grow with the dataset); in threads for small inputs, or from wherever the
    process pool stopped working (no process support, a worker killed)."""
    workers = processes or (min(8, os.cpu_count() or 1) if len(paths) >= PARALLEL_MIN else 1)
    done = 0
    if workers > 1:
        try:
            with ProcessPoolExecutor(workers, mp_context=_process_context()) as pool:
                pending = deque()
                for start in range(0, len(paths), DECODE_CHUNK):
                    stop = start + DECODE_CHUNK
                    pending.append(pool.submit(_decode_chunk, paths[start:stop], errors[start:stop], size))
                    if len(pending) > 2 * workers:
                        for item in pending.popleft().result():
                            yield item
                            done += 1
                while pending:
                    for item in pending.popleft().result():
                        yield item
                        done += 1
            return
        except (OSError, BrokenProcessPool, NotImplementedError) as exc:
            warnings.warn(f"decoding in worker processes failed ({exc}); continuing in threads", stacklevel=3)
    with ThreadPoolExecutor(num_threads or min(8, os.cpu_count() or 1)) as pool:
        yield from pool.map(lambda p, e: (None, e) if e else _load_resized(p, size), paths[done:], errors[done:])


def _process_context():
    """fork on Linux: forkserver and spawn start each worker by importing the caller's __main__ again, which reruns
    any script without an `if __name__ == "__main__":` guard (and fails for `python -`). The workers only run
    PIL and numpy, never torch, so torch's threads in the parent do not matter to them."""
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)


def _decode_to_cache(paths, errors, size, cache: Path | None, processes, num_threads, progress, preprocess):
    """(pixels, kept, [(index, reason)]): every file decoded into a new .npy file, renamed into place as
    `cache`.npy only when complete (so an interrupted run leaves no half cache); without a cache, into a
    temporary file read back into memory."""
    folder = cache.parent if cache is not None else Path(tempfile.mkdtemp(prefix="transferlab-decode-"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        rows = _RowFile(folder, len(paths), size)
    except OSError as exc:   # the cache only saves time; a read-only or full disk must not stop a run
        if cache is None:
            raise
        warnings.warn(f"could not write the image cache in {folder}: {exc}", stacklevel=3)
        return _decode_to_cache(paths, errors, size, None, processes, num_threads, progress, preprocess)
    try:
        bad = []
        jobs = _decoded(paths, errors, size, processes, num_threads)
        try:
            for i, (arr, reason) in enumerate(progress_bar(jobs, progress=progress, total=len(paths), desc="decode")):
                if reason:
                    bad.append((i, reason))
                else:
                    rows.append(normalise_intensity(arr, preprocess))
            rows.finish()
        except OSError as exc:   # full disk, quota, ...
            raise TransferlabError(f"cannot write decoded images to {folder}: {exc.strerror or exc}; free some "
                                   f"space or choose another --cache-dir") from None
        dropped = {i for i, _ in bad}
        kept = [i for i in range(len(paths)) if i not in dropped]
        if cache is None:
            return np.load(rows.path), kept, bad
        _atomic_write(cache.with_suffix(".json"), lambda f: f.write(json.dumps({"bad": bad}).encode()))
        os.replace(rows.path, cache.with_suffix(".npy"))
        return np.load(cache.with_suffix(".npy"), mmap_mode="r"), kept, bad
    finally:
        rows.close()
        if cache is None:
            shutil.rmtree(folder, ignore_errors=True)


class _RowFile:
    """Decoded images appended in order, as rows (C, size, size) uint8, to a new .npy file in `folder`.

    The file is made by numpy (open_memmap: header and size), the rows are written with os.pwrite rather than
    through the memory map, so that written pages go to the page cache and not into this process's resident
    memory. Starts with one channel and is rewritten with three at the first colour image (gray rows
    replicated); finish() trims the rows of unreadable files by rewriting the header's first dimension in
    place (numpy leaves room for that)."""

    def __init__(self, folder: Path, n: int, size: int):
        self.folder, self.n, self.size, self.rows = folder, n, size, 0
        self.path, self.fd, self.offset = None, None, 0
        self._create(channels=1)

    def _create(self, channels: int) -> None:
        fd, name = tempfile.mkstemp(dir=self.folder, prefix="images-", suffix=".npy.tmp")
        os.close(fd)
        shape = (self.n, channels, self.size, self.size)
        header = np.lib.format.open_memmap(name, mode="w+", dtype=np.uint8, shape=shape)
        self.offset, self.channels = header.offset, channels
        del header
        self.path, self.fd = Path(name), os.open(name, os.O_RDWR)

    def _write(self, row: int, data: np.ndarray) -> None:
        view = memoryview(np.ascontiguousarray(data)).cast("B")
        where = self.offset + row * self.channels * self.size * self.size
        while view:
            written = os.pwrite(self.fd, view, where)
            view, where = view[written:], where + written

    def append(self, arr: np.ndarray) -> None:
        if arr.ndim == 3 and self.channels == 1:
            self._widen()
        row = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        self._write(self.rows, np.broadcast_to(row, (self.channels, self.size, self.size)))
        self.rows += 1

    def _widen(self) -> None:
        old_path, old_fd, old_offset = self.path, self.fd, self.offset
        self._create(channels=3)
        plane = self.size * self.size
        try:
            for start in range(0, self.rows, 256):   # in chunks: memory stays flat
                count = min(256, self.rows - start)
                gray = np.frombuffer(os.pread(old_fd, count * plane, old_offset + start * plane), np.uint8)
                self._write(start, np.repeat(gray.reshape(count, 1, self.size, self.size), 3, axis=1))
        finally:
            os.close(old_fd)
            old_path.unlink(missing_ok=True)

    def finish(self) -> None:
        if self.rows < self.n:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                          "shape": (self.rows, self.channels, self.size, self.size)})
            if len(header.getvalue()) != self.offset:   # numpy reserves room for this; never expected
                raise OSError(f"cannot shorten the .npy header of {self.path}")
            os.pwrite(self.fd, header.getvalue(), 0)
            os.ftruncate(self.fd, self.offset + self.rows * self.channels * self.size * self.size)
        os.fsync(self.fd)

    def close(self) -> None:
        """Close the file; it is removed unless it was renamed into place."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.path.unlink(missing_ok=True)


def _read_cache(cache: Path | None, n: int, size: int):
    if cache is None or not cache.with_suffix(".npy").is_file():
        return None
    try:
        bad = [(int(i), str(r)) for i, r in json.loads(cache.with_suffix(".json").read_text())["bad"]]
        pixels = np.load(cache.with_suffix(".npy"), mmap_mode="r")
    except (OSError, ValueError, KeyError, TypeError):
        return None   # unreadable or partial cache: decode again
    dropped = {i for i, _ in bad}
    kept = [i for i in range(n) if i not in dropped]
    if pixels.shape[0] != len(kept) or pixels.shape[2:] != (size, size):
        return None
    return pixels, kept, bad


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
