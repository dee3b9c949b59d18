"""The public Python API: the README's example runs as written (and can run again: overwrite=True), and every
public function still works the second time it is called (importing a submodule of the same name used to replace transferlab.predict/.export/.catalog)."""
from __future__ import annotations

import pkgutil
import re
from pathlib import Path

import pytest

import transferlab as tl
from transferlab.errors import TransferlabError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_no_submodule_shadows_a_public_name():
    submodules = {m.name for m in pkgutil.iter_modules(tl.__path__)}
    assert not submodules & set(tl.__all__), submodules & set(tl.__all__)
    assert set(tl.__all__) <= set(dir(tl))


def test_readme_example_then_every_function_again(xray_dir, tmp_path, monkeypatch, capsys, one_thread):
    block = re.search(r"## Python API.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(README), "exec"), {})                  # first call of each function, as documented
    printed = capsys.readouterr().out
    assert (tmp_path / "runs" / "api-lite0" / "model.onnx").is_file() and "PNEUMONIA" in printed

    # second calls, on small data
    assert tl.check_data(xray_dir, progress=False).exit_code() == 0
    assert [e.name for e in tl.catalog(["resnet18"], progress=False)] == ["resnet18"]
    small = dict(data=str(xray_dir), model="efficientnet_lite0", strategy="features", epochs=2, image_size=64,
                 val_fraction=0.25, progress=False, out=str(tmp_path / "again"))
    run = tl.train(**small)
    # a notebook cell run again: an error in the API's words, or overwrite=True (as the README's example has it)
    with pytest.raises(TransferlabError) as err:
        tl.train(**small)
    assert "choose another out=, or add overwrite=True to replace it" in str(err.value) and "--" not in str(err.value)
    stamp = run.metrics.stat().st_mtime_ns
    assert tl.train(**small, overwrite=True).metrics.stat().st_mtime_ns > stamp
    assert "overwrite=True" in block
    assert tl.evaluate(run, split="test", progress=False)["n"] == run.read_metrics()["test"]["n"]
    assert tl.load_model(run)[1]["model"]["name"] == "efficientnet_lite0"
    image = next((xray_dir / "test" / "PNEUMONIA").iterdir())
    assert len(tl.predict(run, image)) == 1
    assert tl.export(run, "torchscript").name == "model.pt"
    assert tl.ensemble([run, run.path], tmp_path / "ens", k=2).read_metrics()["test"]["n"] == run.read_metrics()["test"]["n"]
    for _ in range(2):
        assert tl.create_model("mobilenet_v3_small", 2, weights="none").head.out_features == 2
        assert "resnet18" in tl.list_models() and tl.get_spec("resnet18").input_size == 224
        assert tl.TrainConfig(strategy="finetune").epochs == 10 and isinstance(tl.RunDir(run.path), tl.RunDir)
        with pytest.raises(TransferlabError, match="does not exist"):
            tl.run_study(tl.StudyConfig(data=str(tmp_path / "missing"), models=["resnet18"], out=str(tmp_path / "s")))
        with pytest.raises(TransferlabError, match="other files"):
            tl.run_demo(tmp_path / "runs")
        with pytest.raises(tl.TransferlabError, match="not a study folder"):
            tl.write_report(tmp_path / "runs")
        finding = tl.lr_find(data=str(xray_dir), model="efficientnet_lite0", strategy="features", image_size=64,
                             val_fraction=0.25, progress=False, steps=20)
        assert finding.steps_run <= 20 and finding.suggested_lr > 0
