"""data/: discovery, patient-disjoint splits, image decoding and caching, transforms, check-data."""
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import real_data
from transferlab.data import images
from transferlab.data.check import check_data
from transferlab.data.discover import DatasetIndex, Sample, discover, patient_id
from transferlab.data.images import ImageError, load_images, read_image
from transferlab.data.split import leakage_warning, make_splits, patient_overlap, shared_with_train
from transferlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageTensorDataset, normalize, basic_augment
from transferlab.errors import DataError

rng = np.random.default_rng(0)


def gray(h=16, w=16):
    return rng.integers(0, 256, (h, w), dtype=np.uint8)


def save(path, arr, mode=None, **kw):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)).save(path, **kw)
    return path


def tree(root, spec):
    """spec: {"train/NORMAL": ["IM-0001-0001.png", ...]} -> small grayscale PNG/JPEG files."""
    for folder, names in spec.items():
        for name in names:
            save(root / folder / name, gray())
    return root


def write_dicom(path, stored, photometric="MONOCHROME2", *, slope=None, intercept=None, window=None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = stored.shape[-2:]
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def png_header(path, width, height):
    """A PNG whose IHDR claims width x height (no real pixel data): opening it must not decode."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                           + chunk(b"IEND", b""))
    return Path(path)


# ---------------------------------------------------------------- discover

@pytest.mark.parametrize("name, patient", [
    ("person123_bacteria_456.jpeg", "person123"), ("person123_virus_7.jpeg", "person123"),
    ("person447_virus_921_1.jpeg", "person447"), ("IM-0115-0001.jpeg", "IM-0115"),
    ("IM-0429-0001-0002.jpeg", "IM-0429"), ("NORMAL2-IM-1234-0001.jpeg", "NORMAL2-IM-1234"),
    ("sub/IM-0007-0001.png", "IM-0007"), ("scan_17.png", "scan_17"), ("p1/scan.png", "scan"),
])
def test_patient_id_kermany_names(name, patient):
    assert patient_id(name) == patient


def test_patient_id_custom_pattern_and_bad_pattern():
    assert patient_id("p001/img3.png", r"^(?P<patient>[^/]+)/") == "p001"
    with pytest.raises(DataError, match="--patient-pattern"):
        patient_id("x.png", r"(\d+)")


def test_discover_split_layout(tmp_path):
    root = tree(tmp_path, {"train/NORMAL": ["IM-0001-0001.png", "IM-0001-0002.png", "sub/IM-0002-0001.jpg"],
                           "train/PNEUMONIA": ["person1_virus_1.png", "person2_bacteria_3.png"],
                           "val/NORMAL": ["IM-0009-0001.png"], "val/PNEUMONIA": ["person9_virus_9.png"]})
    (root / "train/NORMAL/.DS_Store").write_bytes(b"x")
    (root / "train/NORMAL/._IM-0001-0001.png").write_bytes(b"x")
    (root / "train/PNEUMONIA/notes.txt").write_text("hello")
    (root / "README.md").write_text("readme")
    index = discover(root)
    assert index.classes == ["NORMAL", "PNEUMONIA"]
    assert index.source_splits == ["train", "val"]
    assert len(index.split("train")) == 5 and len(index.split("val")) == 2
    assert [s.path for s in index.samples] == sorted(s.path for s in index.samples)
    assert all(s.path.is_absolute() for s in index.samples)
    nested = next(s for s in index.samples if s.path.name == "IM-0002-0001.jpg")
    assert (nested.patient, nested.label, nested.source_split) == ("IM-0002", 0, "train")
    reasons = dict(index.skipped)
    assert reasons["train/NORMAL/.DS_Store"] == "hidden" and reasons["train/NORMAL/._IM-0001-0001.png"] == "hidden"
    assert "not an image" in reasons["train/PNEUMONIA/notes.txt"] and "README.md" in reasons
    fp = index.fingerprint()
    assert fp == discover(root).fingerprint()
    save(root / "train/NORMAL/IM-0003-0001.png", gray())
    assert discover(root).fingerprint() != fp


def test_discover_flat_layout(tmp_path):
    root = tree(tmp_path, {"cats": ["a.png", "b.png"], "dogs": ["c.bmp"]})
    index = discover(root)
    assert index.classes == ["cats", "dogs"] and index.source_splits == ["all"]
    (root / "cats").rename(root / "Train")   # split folders are found whatever their case
    with pytest.raises(DataError, match="no class folders"):
        discover(root)
    assert [s.patient for s in index.samples] == ["a", "b", "c"]


@pytest.mark.parametrize("spec, message", [
    ({}, "no class folders"),
    ({"A": ["a.png"], "B": []}, "without images: B"),
    ({"A": ["a.png", "b.png"]}, "only one class"),
    ({"train/A": ["a.png"], "train/B": ["b.png"], "val/A": ["c.png"], "val/C": ["d.png"]}, "val/ lacks B"),
    ({"val/A": ["a.png"], "val/B": ["b.png"]}, "no train/ folder"),
    ({"train/A": ["a.png"], "train/B": ["b.png"], "validation/A": ["c.png"]}, "validation: looks like a split"),
])
def test_discover_errors(tmp_path, spec, message):
    tree(tmp_path, spec)
    for folder in spec:
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    with pytest.raises(DataError, match=message):
        discover(tmp_path)


def test_discover_root_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        discover(tmp_path / "file.txt")


def test_manifest(tmp_path):
    tree(tmp_path, {"imgs": ["a1.png", "a2.png", "b1.png", "b2.png"]})
    (tmp_path / "m.csv").write_text("path,label,patient_id,split\nimgs/a1.png,sick,p1,train\n"
                                    "imgs/b1.png,well,p2,train\nimgs/a2.png,sick,,val\nimgs/b2.png,well,p3,val\n")
    index = discover(tmp_path, manifest=tmp_path / "m.csv")
    assert index.classes == ["sick", "well"] and index.source_splits == ["train", "val"]
    assert {s.path.name: s.patient for s in index.samples} == {"a1.png": "p1", "a2.png": "a2", "b1.png": "p2",
                                                              "b2.png": "p3"}
    (tmp_path / "flat.csv").write_text("path,label\nimgs/a1.png,x\nimgs/b1.png,y\n")
    assert discover(tmp_path, manifest="flat.csv").source_splits == ["all"]   # relative to the root


@pytest.mark.parametrize("body, message", [
    ("imgs/a.png,x\n", "header"),
    ("path,label\n../outside.png,x\n", "row 2: '../outside.png' points outside"),
    ("path,label\nimgs/../../x.png,x\n", "points outside"),
    ("path,label\n/etc/passwd,x\n", "row 2: '/etc/passwd' is absolute"),
    ("path,label\nimgs/a.png,x\nimgs/gone1.png,y\nimgs/gone2.png,y\n", "2 of 3 listed files do not exist.*gone1"),
    ("path,label,split\nimgs/a.png,x,train\nimgs/a.png,y,val\n", "listed twice"),
    ("path,label,split\nimgs/a.png,x,training\n", "split 'training'"),
])
def test_manifest_errors(tmp_path, body, message):
    tree(tmp_path, {"imgs": ["a.png"]})
    (tmp_path / "m.csv").write_text(body)
    with pytest.raises(DataError, match=message):
        discover(tmp_path, manifest=tmp_path / "m.csv")


# ---------------------------------------------------------------- read_image

def test_read_image_formats(tmp_path):
    g = gray(20, 24)
    assert np.array_equal(read_image(save(tmp_path / "g.png", g)), g)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    assert np.array_equal(read_image(save(tmp_path / "rgb.png", rgb)), rgb)
    same = np.repeat(g[..., None], 3, axis=2)
    same[0, 0, 1] = min(255, int(g[0, 0]) + 2)   # JPEG-like noise within 2 levels still counts as gray
    out = read_image(save(tmp_path / "same.png", same))
    assert out.shape == (20, 24) and np.abs(out.astype(int) - g).max() <= 1
    rgba = np.dstack([np.full((20, 24, 3), 200, np.uint8), np.full((20, 24), 128, np.uint8)])
    out = read_image(save(tmp_path / "rgba.png", rgba))
    assert out.shape == (20, 24) and out[0, 0] == 100   # composited on black: 200 * 128/255
    pal = read_image(save(tmp_path / "pal.png", rgb, "P"))
    assert pal.ndim == 3 and pal.dtype == np.uint8
    la = read_image(save(tmp_path / "la.png", np.dstack([g, np.full_like(g, 255)]), "LA"))
    assert np.array_equal(la, g)
    assert read_image(save(tmp_path / "cmyk.jpg", rgb, "CMYK")).shape == (20, 24, 3)
    assert read_image(save(tmp_path / "g.tif", g)).shape == (20, 24)
    assert read_image(save(tmp_path / "g.bmp", g)).shape == (20, 24)


def test_read_16bit_png_uses_its_own_range(tmp_path):
    arr = np.linspace(100, 4095, 16 * 16).reshape(16, 16).astype(np.uint16)   # 12-bit content
    path = tmp_path / "x16.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    out = read_image(path)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255


def test_read_dicom_modality_window_and_monochrome1(tmp_path):
    stored = np.full((16, 16), 1000, np.uint16)
    stored[0, 0], stored[0, 1] = 600, 2000   # after slope 2, intercept -1000: 200 (below), 3000 (above)
    m2 = read_image(write_dicom(tmp_path / "m2.dcm", stored, slope=2, intercept=-1000, window=(1000, 1000)))
    assert m2.dtype == np.uint8 and m2.shape == (16, 16)
    assert (m2[0, 0], m2[0, 1], m2[5, 5]) == (0, 255, 128)   # window centre -> mid-gray
    ramp = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 10
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", ramp, "MONOCHROME1"))
    assert m1[-1, -1] == 0 and m1[0, 0] == 255   # MONOCHROME1: the brightest stored value shows black
    no_ext = write_dicom(tmp_path / "IM000001", ramp)   # found by its "DICM" magic, not its name
    assert read_image(no_ext)[-1, -1] == 255
    frames = np.stack([ramp, ramp[::-1]])
    assert np.array_equal(read_image(write_dicom(tmp_path / "mf.dcm", frames)), read_image(no_ext))


def _bad_files(tmp_path):
    good = save(tmp_path / "good.jpg", gray(64, 64), quality=90).read_bytes()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.png").write_text("this is not an image")
    save(tmp_path / "tiny.png", np.zeros((1, 1), np.uint8))
    png_header(tmp_path / "huge.png", 20_000, 20_000)
    png_header(tmp_path / "wide.png", 13_000, 100)
    (tmp_path / "text.dcm").write_text("not dicom either")
    return {"empty.png": "empty", "truncated.jpg": "truncated", "text.png": "not an image", "tiny.png": "too small",
            "huge.png": "too large", "wide.png": "too large", "text.dcm": "not a DICOM image"}


def test_read_image_bad_files(tmp_path):
    for name, reason in _bad_files(tmp_path).items():
        with pytest.raises(ImageError, match=reason) as err:
            read_image(tmp_path / name)
        assert str(err.value).startswith(str(tmp_path / name)) and "\n" not in str(err.value)


def test_read_image_permission_denied(tmp_path):
    path = save(tmp_path / "locked.png", gray())
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: chmod does not stop reading")
        with pytest.raises(ImageError, match="permission denied"):
            read_image(path)
    finally:
        path.chmod(0o644)


# ---------------------------------------------------------------- load_images

def test_load_images_channels_and_resize(tmp_path):
    paths = [save(tmp_path / f"g{i}.png", gray(30, 20 + i)) for i in range(3)]
    loaded = load_images(paths, 12, progress=False)
    assert loaded.pixels.shape == (3, 1, 12, 12) and loaded.pixels.dtype == np.uint8
    assert loaded.kept == [0, 1, 2] and loaded.bad == []
    flat = save(tmp_path / "flat.png", np.full((40, 40), 77, np.uint8))
    assert (load_images([flat], 8, progress=False).pixels == 77).all()   # resized, not cropped or padded
    color = save(tmp_path / "c.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    mixed = load_images(paths + [color], 12, progress=False).pixels
    assert mixed.shape == (4, 3, 12, 12)
    assert all(np.array_equal(mixed[i, 0], mixed[i, 2]) for i in range(3))   # gray replicated


def test_load_images_bad_files(tmp_path):
    expected = _bad_files(tmp_path)
    good = [save(tmp_path / f"ok{i}.png", gray()) for i in range(2)]
    paths = good + [tmp_path / name for name in expected]
    with pytest.raises(DataError, match=f"{len(expected)} of {len(paths)} images cannot be read") as err:
        load_images(paths, 16, progress=False)
    assert "empty.png: empty file" in str(err.value) and "--skip-bad" in str(err.value)
    loaded = load_images(paths, 16, skip_bad=True, progress=False)
    assert loaded.kept == [0, 1] and loaded.pixels.shape == (2, 1, 16, 16)
    assert [Path(p).name for p, _ in loaded.bad] == list(expected)


def test_load_images_cache(tmp_path, monkeypatch):
    paths = [save(tmp_path / f"i{i}.png", gray()) for i in range(4)]
    (tmp_path / "bad.png").write_text("x")
    paths.append(tmp_path / "bad.png")
    cache = tmp_path / "cache"
    first = load_images(paths, 16, cache_dir=cache, skip_bad=True, progress=False)
    assert len(list(cache.glob("images-16-*.npy"))) == 1 and not list(cache.glob("*.tmp"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")
    monkeypatch.setattr(images, "decode_image", no_decoding)
    again = load_images(paths, 16, cache_dir=cache, skip_bad=True, progress=False)   # in-process memory
    assert again.pixels is first.pixels
    images._RECENT.clear()
    disk = load_images(paths, 16, cache_dir=cache, skip_bad=True, progress=False)    # the .npy on disk
    assert np.array_equal(disk.pixels, first.pixels) and disk.kept == first.kept and disk.bad == first.bad
    with pytest.raises(DataError, match="1 of 5"):
        load_images(paths, 16, cache_dir=cache, progress=False)   # a cache hit still reports bad files
    save(paths[0], gray())   # new content -> new digest -> must decode
    with pytest.raises(AssertionError, match="decoded again"):
        load_images(paths, 16, cache_dir=cache, skip_bad=True, progress=False)


# ---------------------------------------------------------------- splits

def synthetic_index(n_normal=60, n_pneumonia=140, seed=0, official_val=0, official_test=0):
    r = np.random.default_rng(seed)
    samples = []
    for label, n_patients, prefix in ((0, n_normal, "IM-"), (1, n_pneumonia, "person")):
        for p in range(n_patients):
            for k in range(int(r.integers(1, 5))):
                samples.append(Sample(Path(f"/d/train/{label}/{prefix}{p}-{k}.png"), label, f"{prefix}{p}", "train"))
    for split, n in (("val", official_val), ("test", official_test)):
        samples += [Sample(Path(f"/d/{split}/{i % 2}/{split}{i}.png"), i % 2, f"{split}{i}", split) for i in range(n)]
    return DatasetIndex(Path("/d"), ["NORMAL", "PNEUMONIA"], sorted(samples, key=lambda s: s.path), [])


def test_splits_patient_disjoint_stratified_deterministic():
    index = synthetic_index()
    splits = make_splits(index, val_fraction=0.2, test_fraction=0.2, seed=0)
    parts = [splits.train, splits.val, splits.test]
    assert sum(map(len, parts)) == len(index.samples)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not patient_overlap(parts[a], parts[b])
    pool_ratio = np.mean([s.label for s in index.samples])
    for part in parts:
        assert abs(np.mean([s.label for s in part]) - pool_ratio) < 0.05
    assert 0.12 < len(splits.test) / len(index.samples) < 0.28
    assert "carved" in splits.method["test"] and "after test" in splits.method["val"]
    assert splits.method["counts"]["val"]["NORMAL"] == sum(s.label == 0 for s in splits.val)
    assert splits.method["patient_overlap"] == {"train/val": 0, "train/test": 0, "val/test": 0}
    same = make_splits(index, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert same.val == splits.val and same.test == splits.test
    other = make_splits(index, val_fraction=0.2, test_fraction=0.2, seed=1)
    assert {s.path for s in other.val} != {s.path for s in splits.val}


def test_splits_official_val_policy():
    small = synthetic_index(official_val=16)
    auto = make_splits(small)
    assert "merged" in auto.method["official_val"] and "16 images < 100" in auto.method["official_val"]
    assert sum(map(len, (auto.train, auto.val))) == len(small.samples) and auto.test == []
    assert auto.method["test"] == "none"
    assert make_splits(small, official_val="keep").val == small.split("val")
    dropped = make_splits(small, official_val="drop")
    assert not set(small.split("val")) & set(dropped.train + dropped.val)
    large = synthetic_index(official_val=120)
    assert make_splits(large).val == large.split("val")
    assert len(make_splits(large, official_val="merge").train) > len(large.split("train")) * 0.7
    with pytest.raises(DataError, match="--official-val"):
        make_splits(small, official_val="sometimes")


def test_splits_official_test_kept_as_is():
    index = synthetic_index(official_test=30)
    splits = make_splits(index, test_fraction=0.2)
    assert splits.test == index.split("test") and "official" in splits.method["test"]


def test_splits_errors():
    with pytest.raises(DataError, match="--val-fraction"):
        make_splits(synthetic_index(3, 3), val_fraction=0.1)   # 6 patients, needs 10 folds
    with pytest.raises(DataError, match="class NORMAL has only 1 patient"):
        make_splits(synthetic_index(1, 40), val_fraction=0.2)
    with pytest.raises(DataError, match="--val-fraction"):
        make_splits(synthetic_index(), val_fraction=0.9)


# ---------------------------------------------------------------- transforms

def test_normalize_and_dataset():
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    out = normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.float32
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(out, (x.float() / 255 - mean) / std, atol=1e-5)
    pixels = np.zeros((3, 1, 8, 8), np.uint8)
    ds = ImageTensorDataset(pixels, [0, 1, 1], mean=IMAGENET_MEAN, std=IMAGENET_STD, augment=basic_augment(8))
    pixels[2] = 255
    img, label = ds[2]
    assert img.shape == (3, 8, 8) and label == 1 and ds.pixels is pixels   # the images are not copied
    aug = basic_augment(16)(torch.full((1, 16, 16), 100, dtype=torch.uint8))
    assert aug.dtype == torch.uint8 and aug.shape == (1, 16, 16)


# ---------------------------------------------------------------- check-data

def test_check_data_report(tmp_path):
    root = tree(tmp_path, {"train/NORMAL": ["IM-0001-0001.png", "IM-0002-0001.png"],
                           "train/PNEUMONIA": ["person1_virus_1.png", "person2_virus_2.png"],
                           "val/NORMAL": ["IM-0001-0002.png"], "val/PNEUMONIA": ["person3_virus_3.png"]})
    dup = (root / "train/NORMAL/IM-0001-0001.png").read_bytes()
    (root / "val/NORMAL/IM-0001-0002.png").write_bytes(dup)
    (root / "train/PNEUMONIA/person2_virus_2.png").write_bytes(b"")
    (root / "train/.DS_Store").write_bytes(b"x")
    report = check_data(root, progress=False)
    assert report.counts == {"train": {"NORMAL": 2, "PNEUMONIA": 2}, "val": {"NORMAL": 1, "PNEUMONIA": 1}}
    assert report.bad == [("train/PNEUMONIA/person2_virus_2.png", "empty file (0 bytes)")]
    assert report.duplicates == [["train/NORMAL/IM-0001-0001.png", "val/NORMAL/IM-0001-0002.png"]]
    assert report.duplicates_across_splits == 1 and report.duplicates_across_classes == 0
    assert report.patient_overlap == {"train/val": ["IM-0001"]}
    # val/ shares patient IM-0001 (1 image), which is also a byte copy; val/ this small is merged: no warning
    assert report.shared_with_train == {"val": {"against": "train", "patients": 1, "images": 1, "identical": 1, "of": 2}}
    assert not [note for note in report.notes if note.startswith("warning:")]
    assert report.formats == {"PNG L": 5} and report.sizes["width"]["max"] == 16
    assert len(report.skipped) == 1
    text = report.to_text()
    assert "person2_virus_2.png: empty file" in text and "--skip-bad" in text
    assert report.to_dict()["counts"]["val"]["NORMAL"] == 1


def _leaky(root):
    """train/ and an official test/ that shares patient IM-0001 and holds a byte copy of a train image."""
    tree(root, {"train/NORMAL": ["IM-0001-0001.png", "IM-0002-0001.png"], "train/PNEUMONIA": ["person1_virus_1.png"],
                "test/NORMAL": ["IM-0001-0003.png", "IM-0009-0001.png"], "test/PNEUMONIA": ["person5_virus_5.png"]})
    (root / "test/PNEUMONIA/person5_virus_5.png").write_bytes((root / "train/PNEUMONIA/person1_virus_1.png").read_bytes())
    return root


def test_shared_with_train_counts_patients_and_identical_files(tmp_path):
    index = discover(_leaky(tmp_path))
    shared = shared_with_train(index.split("train"), index.split("test"))
    assert shared == {"against": "train", "patients": 1, "images": 1, "identical": 1, "of": 3}
    assert leakage_warning("test", shared, "the official test/ folder, used as given") == (
        "test (the official test/ folder, used as given) shares 1 patient with train (1 of its 3 images) and "
        "1 image byte-identical to train images: its scores may be optimistic")
    assert leakage_warning("val", {**shared, "patients": 0, "identical": 0}, "carved") is None
    report = check_data(tmp_path, progress=False)
    assert report.shared_with_train["test"] == shared
    assert "warning: test (the official test/ folder, used as given) shares 1 patient" in report.to_text()


# ---------------------------------------------------------------- real data

def test_real_chest_xray_sample(tmp_path):
    real = real_data()
    for cls in ("NORMAL", "PNEUMONIA"):
        for src in sorted((real / "train" / cls).iterdir())[:20]:
            (tmp_path / "train" / cls).mkdir(parents=True, exist_ok=True)
            (tmp_path / "train" / cls / src.name).symlink_to(src)
    index = discover(tmp_path)
    assert len(index.samples) == 40 and index.classes == ["NORMAL", "PNEUMONIA"]
    splits = make_splits(index, val_fraction=0.25, seed=0)
    assert not patient_overlap(splits.train, splits.val)
    assert {s.label for s in splits.val} == {0, 1}
    loaded = load_images([s.path for s in splits.train], 64, progress=False)
    assert loaded.pixels.shape == (len(splits.train), 1, 64, 64)   # R=G=B JPEGs load as 1 channel
    assert check_data(tmp_path, progress=False).formats == {"JPEG RGB (R=G=B)": 40}


def test_no_patient_ids_means_overlap_could_not_be_checked(tmp_path):
    """An MRI-like set whose files are image(N).jpg in every folder: equal names in two splits are not patients
    shared between them; every place that speaks of patients says it could not check."""
    from transferlab.analysis.splits import data_findings, leakage

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("glioma", "meningioma"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"image({i}).jpg")
    report = check_data(tmp_path, progress=False)
    assert report.patient_overlap == {"train/test": None} and report.exit_code() == 0
    assert "could not be checked" in report.to_text()
    index = discover(tmp_path)
    assert not any(s.patient_known for s in index.samples)
    shared = shared_with_train(index.split("train"), index.split("test"))
    assert shared["patients"] is None and "could not be checked" in leakage_warning("test", shared, "as given")
    rows = [{"split": s.source_split, "file": index.relative(s), "label": "x", "patient": ""} for s in index.samples]
    leak = leakage(tmp_path, rows)
    assert leak["patient_overlap"]["train/test"] is None
    same = {"runs": 1, "different": [], "same_test_images": True, "n_test": 8}
    findings = " ".join(data_findings({}, leak, {}, same, None))
    assert "could not be checked" in findings and "LEAKAGE: patients" not in findings
