"""Recipes for shifted images: --augment xray, --feature-views (augmented cached features) and --preprocess
equalize|clahe, the same in training, prediction, Grad-CAM, evaluation and export (the sidecar names it).

Real chest X-rays from the bundled sample at 64 px, EfficientNet-Lite0 with its genuine ImageNet weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from transferlab.data.images import load_images
from transferlab.data.preprocess import preprocess
from transferlab.data.transforms import acquisition_augment, augmented_copy, basic_augment, make_augment
from transferlab.demo import sample_path
from transferlab.exporting import export
from transferlab.prediction import predict
from transferlab.rundir import read_csv
from transferlab.training import train

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 64
SMALL = dict(data=str(sample_path()), model="efficientnet_lite0", strategy="features", epochs=3, image_size=SIZE,
             max_images=40, progress=False)


def test_xray_augmentation_is_uint8_seeded_and_scaled():
    image = torch.from_numpy(np.tile(np.linspace(0, 255, SIZE, dtype=np.uint8), (1, SIZE, 1)))
    augment = acquisition_augment(SIZE)
    torch.manual_seed(0)
    views = [augment(image) for _ in range(8)]
    assert all(v.dtype == torch.uint8 and v.shape == image.shape for v in views)
    assert sum(not torch.equal(v, image) for v in views) >= 6   # most views change the image
    assert make_augment("none", SIZE, 1.0) is None and make_augment("xray", SIZE, 0.0) is None
    assert isinstance(make_augment("basic", SIZE, 1.0), type(basic_augment(SIZE)))
    pixels = np.stack([image.numpy()] * 3)
    one, again, other = (augmented_copy(pixels, augment, seed) for seed in (1, 1, 2))
    assert np.array_equal(one, again) and not np.array_equal(one, other)


def test_preprocess_changes_pixels_and_is_cached_apart(tmp_path):
    files = sorted((sample_path() / "val" / "NORMAL").glob("*.jpeg"))[:3]
    plain = load_images(files, SIZE, progress=False, cache_dir=tmp_path).pixels
    clahe = load_images(files, SIZE, preprocess="clahe", progress=False, cache_dir=tmp_path).pixels
    assert not np.array_equal(plain, clahe)
    assert np.array_equal(clahe[0, 0], preprocess(np.array(plain[0, 0]), "clahe"))
    equalized = preprocess(np.array(plain[0, 0]), "equalize")
    assert equalized.min() == 0 and equalized.max() == 255
    assert len(list(tmp_path.glob("images-*.npy"))) == 2   # one cache per preprocessing


@pytest.fixture(scope="module")
def clahe_run(tmp_path_factory):
    return train(**SMALL, preprocess="clahe", out=str(tmp_path_factory.mktemp("clahe") / "run"))


def test_a_preprocessed_run_predicts_and_exports_as_it_was_trained(clahe_run, tmp_path):
    import onnxruntime as ort

    assert clahe_run.read_config()["model"]["preprocess"] == "clahe"
    rows = {r["file"]: r for r in read_csv(clahe_run.predictions) if r["split"] == "test"}
    files = sorted(rows)[:4]
    got = predict(clahe_run.path, [sample_path() / f for f in files])
    # prediction applies the run's CLAHE: the probabilities the run recorded for its test images
    for f, r in zip(files, got):
        assert r["prob_PNEUMONIA"] == pytest.approx(float(rows[f]["prob_PNEUMONIA"]), abs=1e-5)
    path = export(clahe_run.path, "onnx", tmp_path / "model.onnx")
    meta = json.loads((tmp_path / "model.onnx.json").read_text())
    assert meta["preprocess"]["name"] == "clahe" and not meta["preprocess"]["baked_into_graph"]
    assert "createCLAHE(clipLimit=2.0" in meta["preprocess"]["apply_before_the_graph"]
    # the graph, fed pixels preprocessed as the sidecar says, gives predict's probabilities
    pixels = load_images([sample_path() / f for f in files], SIZE, preprocess="clahe", progress=False).pixels
    x = np.broadcast_to(pixels, (len(files), 3, SIZE, SIZE)).astype(np.float32)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixels": x})[0]
    assert np.abs(out[:, 1] - [r["prob_PNEUMONIA"] for r in got]).max() < 1e-4


def test_feature_views_train_the_head_on_augmented_cached_features(tmp_path, monkeypatch):
    from transferlab import strategies

    passes = []   # backbone passes over a set of images (features read from the cache make none)
    original = strategies.feature_batches

    def counted(model, pixels, **kwargs):
        passes.append(len(pixels))
        return original(model, pixels, **kwargs)

    monkeypatch.setattr(strategies, "feature_batches", counted)
    cache = tmp_path / "cache"
    plain = train(**SMALL, feature_views=1, cache_dir=str(cache), out=str(tmp_path / "plain"))
    n_train = sum(plain.read_config()["data"]["counts"]["train"])
    assert len(passes) == 3   # train, validation, test
    passes.clear()
    views = train(**SMALL, feature_views=3, cache_dir=str(cache), out=str(tmp_path / "views"))   # augment xray
    assert views.read_config()["settings"]["augment"] == "xray"
    assert passes == [n_train, n_train]   # two augmented views of the training images; the rest from the cache
    assert read_csv(views.history) != read_csv(plain.history)
    passes.clear()
    # the same views again: from the feature cache, the same result
    again = train(**SMALL, feature_views=3, cache_dir=str(cache), out=str(tmp_path / "again"))
    assert passes == [] and again.weights.read_bytes() == views.weights.read_bytes()
    # views need an augmentation to draw them, and a strategy with cached features
    from transferlab.errors import TransferlabError

    with pytest.raises(TransferlabError, match=r"^feature_views=3 needs views to draw: an augment= other than none"):
        train(**SMALL, augment="none", feature_views=3, out=str(tmp_path / "none"))
    with pytest.raises(TransferlabError, match=r"^feature_views=3 needs a strategy that trains a head on cached "
                                               r"features: features or lpft$"):
        train(**{**SMALL, "strategy": "finetune"}, feature_views=3, out=str(tmp_path / "finetune"))
    assert not (tmp_path / "none").exists() and not (tmp_path / "finetune").exists()


def test_finetune_trains_on_xray_augmented_images(tmp_path, monkeypatch):
    from transferlab.data import transforms

    seen = []

    def counting(size, strength):
        augment = acquisition_augment(size, strength)
        return lambda image: seen.append(image.shape) or augment(image)

    monkeypatch.setitem(transforms.AUGMENTATIONS, "xray", counting)
    run = train(**{**SMALL, "strategy": "finetune", "epochs": 1, "max_images": 16}, augment="xray",
                out=str(tmp_path / "run"))
    assert len(seen) == sum(run.read_config()["data"]["counts"]["train"])   # every training image, once an epoch
    assert run.read_config()["settings"]["augment"] == "xray"


def test_init_takes_the_runs_preprocessing(clahe_run, tmp_path):
    from transferlab.config import TrainConfig
    from transferlab.errors import TransferlabError

    assert TrainConfig(data="d", out="o", init=str(clahe_run.path)).preprocess == "clahe"
    with pytest.raises(TransferlabError, match=r"was trained with preprocess='clahe', not preprocess='equalize': leave preprocess= out$"):
        TrainConfig(data="d", out="o", init=str(clahe_run.path), preprocess="equalize")
