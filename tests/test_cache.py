"""The decode cache on disk: a memory-mapped .npy written by worker processes, and the feature cache beside it."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.data import images
from transferlab.data.images import MappedRows, load_images
from transferlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageTensorDataset
from transferlab.errors import DataError

rng = np.random.default_rng(0)


def gray_files(folder: Path, n: int, side: int = 20) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"g{i}.png")
        Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(autouse=True)
def _forget_recent():
    images._RECENT.clear()
    yield
    images._RECENT.clear()


def test_cache_is_a_read_only_memory_map_reused_across_runs(tmp_path, monkeypatch):
    paths = gray_files(tmp_path / "img", 6)
    first = load_images(paths, 16, cache_dir=tmp_path / "cache", progress=False)
    assert isinstance(first.pixels, np.memmap) and not first.pixels.flags.writeable
    [npy] = (tmp_path / "cache").glob("images-16-*.npy")
    assert np.load(npy).shape == (6, 1, 16, 16)   # grayscale: one channel on disk
    images._RECENT.clear()   # as a new process would start

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")
    monkeypatch.setattr(images, "_load_resized", no_decoding)
    again = load_images(paths, 16, cache_dir=tmp_path / "cache", progress=False)
    assert Path(again.pixels.filename) == npy and np.array_equal(again.pixels, first.pixels)


def test_processes_and_threads_decode_the_same(tmp_path):
    paths = gray_files(tmp_path / "img", 70)
    (tmp_path / "img" / "bad.png").write_text("not a png")
    paths.insert(3, tmp_path / "img" / "bad.png")
    color = tmp_path / "img" / "color.png"
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(color)
    paths.insert(50, color)   # widens the file to 3 channels midway
    threads = load_images(paths, 16, cache_dir=tmp_path / "a", skip_bad=True, progress=False, processes=1)
    images._RECENT.clear()
    procs = load_images(paths, 16, cache_dir=tmp_path / "b", skip_bad=True, progress=False, processes=2)
    assert procs.pixels.shape == (71, 3, 16, 16) and np.array_equal(procs.pixels, threads.pixels)
    assert procs.kept == threads.kept and procs.kept[3] == 4 and [Path(p).name for p, _ in procs.bad] == ["bad.png"]
    gray_rows = np.delete(np.arange(71), 49)
    assert np.array_equal(procs.pixels[gray_rows, 0], procs.pixels[gray_rows, 2])   # gray replicated
    [npy] = (tmp_path / "b").glob("*.npy")
    assert np.load(npy).shape == (71, 3, 16, 16)   # the rows of the bad file are trimmed from the file
    assert json.loads(npy.with_suffix(".json").read_text())["bad"][0][0] == 3


def test_bad_files_are_reported_from_processes_and_from_the_cache(tmp_path):
    paths = gray_files(tmp_path / "img", 40)
    (tmp_path / "img" / "empty.png").write_bytes(b"")
    paths.append(tmp_path / "img" / "empty.png")
    for _ in range(2):   # decoded in processes, then found in the cache
        images._RECENT.clear()
        with pytest.raises(DataError, match=r"1 of 41 images cannot be read \(.*empty.png: empty file"):
            load_images(paths, 16, cache_dir=tmp_path / "cache", progress=False, processes=2)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


@pytest.mark.parametrize("processes", [1, 2])
def test_interrupted_decoding_leaves_no_file(tmp_path, monkeypatch, processes):
    paths = gray_files(tmp_path / "img", 40)
    real = images._load_resized

    def fails_on_the_30th(path, size):
        if path.name == "g30.png":
            raise KeyboardInterrupt if processes == 1 else RuntimeError("worker died")
        return real(path, size)
    monkeypatch.setattr(images, "_load_resized", fails_on_the_30th)
    with pytest.raises(KeyboardInterrupt if processes == 1 else RuntimeError):
        load_images(paths, 16, cache_dir=tmp_path / "cache", progress=False, processes=processes)
    assert list((tmp_path / "cache").iterdir()) == []   # neither a half .npy nor a .tmp


def test_datasets_pickle_a_memory_map_as_its_file(tmp_path):
    paths = gray_files(tmp_path / "img", 50, side=64)
    pixels = load_images(paths, 64, cache_dir=tmp_path / "cache", progress=False).pixels
    ds = ImageTensorDataset(pixels[10:], np.arange(40) % 2, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert MappedRows.of(pixels[10:]).offset == MappedRows.of(pixels).offset + 10 * 64 * 64
    blob = pickle.dumps(ds)
    assert len(blob) < 2_000   # a file name and offsets, not 160 kB of pixels
    copy = pickle.loads(blob)
    assert isinstance(copy.pixels, np.memmap)
    for i in (0, 17, 39):
        assert torch.equal(copy[i][0], ds[i][0]) and copy[i][1] == ds[i][1]
    in_memory = ImageTensorDataset(np.array(pixels), np.zeros(50), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert torch.equal(pickle.loads(pickle.dumps(in_memory))[5][0], in_memory[5][0])


RSS_CHILD = """
import resource, sys
from pathlib import Path
from transferlab.data.images import load_images
paths = sorted(Path(sys.argv[1]).glob("*.png"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pixels = load_images(paths, 256, cache_dir=Path(sys.argv[2]), progress=False, processes=1).pixels
print(pixels.nbytes, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_decoding_does_not_hold_the_images_in_memory(tmp_path):
    """1,500 images of 256x256 (96 MB decoded) raise the decoding process's peak RSS by far less than that."""
    paths = gray_files(tmp_path / "img", 1500, side=16)
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(paths[0].parent), str(tmp_path / "cache")],
                         capture_output=True, text=True, check=True).stdout.split()
    nbytes, grew = map(int, out)
    assert nbytes == 1500 * 256 * 256 and grew < nbytes / 4


def test_feature_cache_is_a_memory_mapped_npy(tmp_path, monkeypatch):
    from transferlab import strategies
    from transferlab.models.heads import create_model

    paths = gray_files(tmp_path / "img", 5, side=32)
    pixels = load_images(paths, 32, cache_dir=tmp_path / "cache" / "images", progress=False).pixels
    model = create_model("efficientnet_lite0", 2)
    common = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, device=torch.device("cpu"), progress=False, batch_size=2)
    first = strategies.FixedFeatures().features(model, pixels, cache_dir=tmp_path / "cache", **common)
    [npy] = (tmp_path / "cache" / "features").iterdir()   # complete, renamed into place: no .tmp beside it
    assert npy.suffix == ".npy" and np.load(npy).shape == (5, model.feature_dim) and np.load(npy).dtype == np.float32
    assert torch.allclose(first, strategies.extract_features(model, pixels, **common), atol=1e-5)

    def no_backbone(*args, **kwargs):
        raise AssertionError("features computed again")
    monkeypatch.setattr(strategies, "feature_batches", no_backbone)
    again = strategies.FixedFeatures().features(model, pixels, cache_dir=tmp_path / "cache", **common)
    assert torch.equal(again, first)
    again += 1   # copy-on-write: the tensor is writable, the file is not changed
    assert not torch.equal(again, first) and torch.equal(torch.from_numpy(np.load(npy)), first)


def test_unwritable_cache_warns_and_full_disk_is_one_line(tmp_path, monkeypatch):
    import errno
    import os

    from transferlab.errors import TransferlabError

    paths = gray_files(tmp_path / "img", 4)
    (tmp_path / "file").write_text("not a folder")
    with pytest.warns(UserWarning, match="could not write the image cache"):
        loaded = load_images(paths, 16, cache_dir=tmp_path / "file" / "cache", progress=False)
    assert loaded.pixels.shape == (4, 1, 16, 16) and not isinstance(loaded.pixels, np.memmap)
    images._RECENT.clear()

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(images.os, "pwrite", full)
    with pytest.raises(TransferlabError, match=r"cannot write decoded images to .*No space left on device.*--cache-dir"):
        load_images(paths, 16, cache_dir=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []
