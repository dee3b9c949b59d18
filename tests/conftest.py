"""Shared fixtures: a tiny chest-X-ray-like dataset the tests make themselves, and the real data when present."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# ../shared beside the repository (CI has it there); relative to this file, so any clone finds it
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def skip_unless_ci(reason: str) -> None:
    """Skip on a developer's machine; under CI (which has everything) the same condition is a failure."""
    if in_ci():
        pytest.fail(f"{reason} (CI must run this test)")
    pytest.skip(reason)


def real_data() -> Path:
    """The real chest X-rays in ../shared/data/chest_xray: skipped where they are absent, failed under CI."""
    if not (REAL_DATA / "train").is_dir():
        skip_unless_ci(f"real chest X-ray data not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(autouse=True, scope="session")
def _cache_in_tmp(tmp_path_factory):
    os.environ["TRANSFERLAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))


def make_xray_dataset(root: Path, *, patients_per_class: int = 12, images_per_patient: int = 2, size: int = 48,
                      seed: int = 0, splits=("train",)) -> Path:
    """Kermany-style folders and file names. PNEUMONIA images carry a bright 'opacity' blob, so a model
    can genuinely learn the task; several images per patient exercise patient-disjoint splitting."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for label in ("NORMAL", "PNEUMONIA"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for p in range(patients_per_class):
                pid = p + (1000 if split == "test" else 0)
                for k in range(images_per_patient):
                    img = rng.normal(90, 20, (size, size))
                    if label == "PNEUMONIA":
                        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
                        yy, xx = np.mgrid[:size, :size]
                        img += 110 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 6) ** 2))
                        name = f"person{pid}_bacteria_{pid * 10 + k}.jpeg"
                    else:
                        name = f"IM-{pid:04d}-{k + 1:04d}.jpeg"
                    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / name, quality=90)
    return root


@pytest.fixture(scope="session")
def xray_dir(tmp_path_factory) -> Path:
    return make_xray_dataset(tmp_path_factory.mktemp("xray"), splits=("train", "test"))


@pytest.fixture(scope="session")
def real_subset(tmp_path_factory) -> Path:
    """~60 real Kermany images (symlinked) from ../shared/data (see real_data)."""
    source = real_data()
    root = tmp_path_factory.mktemp("real")
    for label in ("NORMAL", "PNEUMONIA"):
        (root / "train" / label).mkdir(parents=True)
        for f in sorted((source / "train" / label).iterdir())[:30]:
            (root / "train" / label / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread is as fast as two, and does not stall when the machine is busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def chelsea_probs(model, spec):
    """ImageNet class probabilities of skimage's cat photo (chelsea, class 285 "Egyptian cat"), resized to the
    model's input size and normalised as its spec says."""
    import skimage.data as skimage_data   # in the test extra: never skipped
    import torch

    img = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1).float().div(255)[None]
    img = torch.nn.functional.interpolate(img, size=(spec.input_size,) * 2, mode="bilinear", antialias=True)
    x = (img - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.eval()(x).softmax(1)[0]


def sigkill_when(marker: Path, command: list[str], log_path: Path, timeout: float = 240) -> None:
    """Run `command`, kill it with SIGKILL as soon as it creates `marker`, and check that it was killed there."""
    with open(log_path, "a") as log:
        child = subprocess.Popen(command, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert marker.exists(), log_path.read_text()[-3000:]
    assert child.returncode == -signal.SIGKILL


def interrupt_training(monkeypatch, epoch: int, batch: int = 0):
    """Make training raise KeyboardInterrupt (Ctrl+C) at step `batch` of `epoch` (0-based); returns the undo."""
    from transferlab import engine

    step = engine.Classifier.training_step

    def interrupted(self, batch_, batch_idx):
        if self.current_epoch == epoch and batch_idx == batch:
            raise KeyboardInterrupt
        return step(self, batch_, batch_idx)
    monkeypatch.setattr(engine.Classifier, "training_step", interrupted)
    return lambda: monkeypatch.setattr(engine.Classifier, "training_step", step)


def fewer_resamples(monkeypatch, n: int) -> None:
    """Shift estimates with n bootstrap resamples and n domain-classifier permutations: quick, for tests."""
    from transferlab.analysis import domain, shift

    monkeypatch.setattr(shift, "N_BOOT", n)
    monkeypatch.setattr(domain, "N_PERMUTATIONS", n)


def features_run(tmp_path_factory, xray_dir, name: str):
    """A small EfficientNet-Lite0 `features` run on the tests' X-rays (64 px), for the tests of `evaluate`."""
    from transferlab.training import train

    out = tmp_path_factory.mktemp(name) / "run"
    return train(data=str(xray_dir), model="efficientnet_lite0", strategy="features", epochs=10, out=str(out),
                 image_size=64, batch_size=16, progress=False, val_fraction=0.25)


def external_hospital(tmp_path_factory, name: str, *, patients_per_class: int, seed: int) -> Path:
    """Another 'hospital': same classes, new patients, class folders at the top (ROOT/CLASS/*)."""
    import shutil

    made = make_xray_dataset(tmp_path_factory.mktemp("ext-made"), patients_per_class=patients_per_class, seed=seed,
                             splits=("test",))
    root = tmp_path_factory.mktemp("ext") / name
    shutil.copytree(made / "test", root)
    return root
