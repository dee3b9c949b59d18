"""predict (JPEG, PNG, DICOM, folders, bad files, Grad-CAM) and export (ONNX, TorchScript) on a tiny real run."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.data.images import load_images, read_image
from transferlab.demo import sample_path
from transferlab.errors import TransferlabError
from transferlab.exporting import add_export_arguments, export, run_export
from transferlab.prediction import add_predict_arguments, predict, run_predict
from transferlab.rundir import read_csv
from transferlab.training import train

SIZE = 64


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "lite0"
    return train(data=str(sample_path()), model="efficientnet_lite0", strategy="features", epochs=2,
                  image_size=SIZE, max_images=40, progress=False, out=str(out))


def test_predict_jpeg_png_dicom_and_folder(run, tmp_path):
    rows = {r["file"]: r for r in read_csv(run.predictions) if r["split"] == "test"}
    rel = sorted(rows)[0]
    jpeg = sample_path() / rel
    # the same pixels as PNG and as an 8-bit DICOM (stretched to 0..255: DICOM without a window is min..max scaled)
    arr = read_image(jpeg).astype(np.float32)
    arr = np.rint((arr - arr.min()) * 255 / (arr.max() - arr.min())).astype(np.uint8)
    png, dcm = tmp_path / "x.png", tmp_path / "x.dcm"
    Image.fromarray(arr).save(png)
    _write_dicom(dcm, arr)
    out = tmp_path / "pred.csv"
    result = predict(run.path, [jpeg, png, dcm], out=out)
    assert len(result) == 3 and out.exists() and len(read_csv(out)) == 3
    for r in result:
        assert r["prob_NORMAL"] + r["prob_PNEUMONIA"] == pytest.approx(1, abs=1e-6)
        assert r["predicted"] == ("PNEUMONIA" if r["prob_PNEUMONIA"] >= r["threshold"] else "NORMAL")
    # the JPEG gets exactly the probability the run recorded for it; PNG and DICOM decode to the same pixels
    assert result[0]["prob_PNEUMONIA"] == pytest.approx(float(rows[rel]["prob_PNEUMONIA"]), abs=1e-5)
    assert result[1]["prob_PNEUMONIA"] == pytest.approx(result[2]["prob_PNEUMONIA"], abs=1e-6)
    assert result[0]["threshold"] == run.read_metrics()["threshold"]
    # a folder is searched for image files
    folder = predict(run.path, [sample_path() / "test" / "NORMAL"])
    assert len(folder) == len(list((sample_path() / "test" / "NORMAL").glob("*.jpeg")))


def test_predict_bad_files(run, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    good = next((sample_path() / "test" / "NORMAL").glob("*.jpeg"))
    with pytest.raises(TransferlabError, match="broken.png") as err:
        predict(run.path, [good, bad])
    assert "\n" not in str(err.value)
    assert [r["file"] for r in predict(run.path, [good, bad], skip_bad=True)] == [str(good)]
    with pytest.raises(TransferlabError, match="missing.png"):
        predict(run.path, [tmp_path / "missing.png"])


def test_predict_cam_and_cli(run, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_predict_arguments(sub)
    images = sorted((sample_path() / "test" / "PNEUMONIA").glob("*.jpeg"))[:2]
    out = tmp_path / "p" / "pred.csv"
    run_predict(parser.parse_args(["predict", str(run.path), *map(str, images), "--cam", "--out", str(out),
                                   "--no-progress"]))
    printed = capsys.readouterr().out.splitlines()
    rows = read_csv(out)
    # the table's body: one line per image, its probabilities and prediction as in the CSV (the header always
    # names the classes, so only these lines tell what was predicted)
    assert len(printed) == len(rows) + 2 and printed[-1].startswith(f"{len(rows)} image(s); threshold ")
    for line, row in zip(printed[1:], rows):
        assert line.split()[1:] == [f"{float(row['prob_NORMAL']):.4f}", f"{float(row['prob_PNEUMONIA']):.4f}",
                                    row["predicted"]]
    for row in rows:
        with Image.open(row["cam"]) as im:
            assert im.format == "PNG" and im.size == (SIZE, SIZE) and im.mode == "RGB"


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")
def test_export_onnx_matches_pytorch(run, tmp_path):
    import onnxruntime as ort

    files = sorted((sample_path() / "val" / "NORMAL").glob("*.jpeg"))[:4] + \
        sorted((sample_path() / "val" / "PNEUMONIA").glob("*.jpeg"))[:4]
    want = np.array([[r["prob_NORMAL"], r["prob_PNEUMONIA"]] for r in predict(run.path, files)])
    pixels = load_images(files, SIZE, progress=False).pixels
    x = np.broadcast_to(pixels, (len(files), 3, SIZE, SIZE)).astype(np.float32)
    path = export(run.path, "onnx", tmp_path / "model.onnx")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixels": x})[0]
    assert np.abs(got - want).max() < 1e-4
    meta = json.loads((tmp_path / "model.onnx.json").read_text())
    assert meta["input"]["shape"] == ["batch", 3, SIZE, SIZE] and meta["normalisation"]["baked_into_graph"]
    assert meta["output"]["classes"] == ["NORMAL", "PNEUMONIA"] and meta["threshold"] == run.read_metrics()["threshold"]
    assert meta["positive_class"] == "PNEUMONIA" and meta["threshold_rule"].startswith(
        "predict PNEUMONIA when probabilities[1] >= threshold")
    # TorchScript, through the command-line functions
    parser = argparse.ArgumentParser()
    add_export_arguments(parser.add_subparsers(dest="command"))
    run_export(parser.parse_args(["export", str(run.path), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]))
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    assert np.abs(scripted(torch.from_numpy(x)).detach().numpy() - want).max() < 1e-4


def _write_dicom(path, arr: np.ndarray) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CR"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_export_without_onnx_is_one_line(monkeypatch, tmp_path):
    import importlib.util

    from transferlab.errors import TransferlabError
    from transferlab.exporting import export

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(TransferlabError, match="pip install onnx"):
        export(tmp_path, format="onnx")
