"""The test images a run gets wrong, and Grad-CAM overlays of where the model looked."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.preprocess import of_run as preprocess_of
from ..errors import TransferlabError
from .runs import Run

def top_errors(run: Run, k: int = 8) -> list[dict]:
    """The k test images the run got wrong (by its validation-chosen decision rule) with the highest confidence
    (the probability of the class it wrongly predicted)."""
    p = run.predictions["test"]
    wrong = np.flatnonzero(p.pred != p.true)
    confidence = p.probs[np.arange(len(p.pred)), p.pred]
    order = wrong[np.argsort(-confidence[wrong], kind="stable")][:k]
    return [{"file": p.files[i], "label": p.labels[i], "predicted": run.classes[p.pred[i]],
             **({"prob_positive": float(p.prob[i])} if run.positive else {}),
             "confidence": float(confidence[i])} for i in order]


def confused_pairs(run: Run, split: str = "test") -> list[dict]:
    """Every (true, predicted) pair of different classes with its count and share of the true class, most
    frequent first."""
    p = run.predictions[split]
    out = []
    for i, a in enumerate(run.classes):
        n = int((p.true == i).sum())
        for j, b in enumerate(run.classes):
            count = int(((p.true == i) & (p.pred == j)).sum())
            if i != j and count:
                out.append({"true": a, "predicted": b, "count": count, "share_of_true": count / n})
    return sorted(out, key=lambda r: -r["count"])


def gradcam_overlays(model, pixels, *, mean, std, targets: list[int], batch_size: int = 16) -> list:
    """Grad-CAM of class targets[i] at the backbone's last feature map (models.heads.last_feature_map) over each
    uint8 (C, H, W) image in `pixels`: (image, overlay, flat) triples, image and overlay uint8 RGB (H, W, 3) at the
    model's input size; `flat` is True where the map has no activation at all (nothing at that layer raises the
    target's score), so the overlay shows nothing and should be labelled as such."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from ..data.transforms import normalize, pixel_tensor
    from ..models.heads import last_feature_map

    if len(pixels) == 0:
        return []
    model.cpu().eval().requires_grad_(True)
    example = normalize(pixel_tensor(pixels[:1]), mean, std)
    layer = last_feature_map(model.backbone, example)
    if layer is None:
        raise TransferlabError(f"{type(model.backbone).__name__} has no convolutional feature map for Grad-CAM")
    out = []
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for start in range(0, len(pixels), batch_size):
            batch = pixel_tensor(pixels[start:start + batch_size])
            maps = cam(input_tensor=normalize(batch, mean, std),
                       targets=[ClassifierOutputTarget(t) for t in targets[start:start + batch_size]])
            rgb = np.broadcast_to(batch.numpy().transpose(0, 2, 3, 1), (*batch.shape[:1], *batch.shape[2:], 3))
            out += [(np.ascontiguousarray(img), show_cam_on_image(img.astype(np.float32) / 255, m, use_rgb=True,
                                                                  image_weight=0.55), bool(np.ptp(m) < 1e-6))
                    for img, m in zip(rgb, maps)]
    return out


def error_overlays(run: Run, files: list[str], predicted: list[str], root: str | Path | None = None) -> list[tuple]:
    """(image, Grad-CAM overlay, flat) of each of the run's files (paths relative to `root`, default its data
    root), decoded and resized exactly as the model saw them, for the class the model predicted: what made it
    say what it said."""
    from ..data.images import load_images
    from ..evaluation import load_model

    if not files:
        return []
    model, config = load_model(run.path)
    root = Path(root or config["data"]["root"])
    loaded = load_images([root / f for f in files], config["model"]["image_size"], preprocess=preprocess_of(config),
                         progress=False)
    classes = config["data"]["classes"]
    return gradcam_overlays(model, loaded.pixels, mean=config["model"]["mean"], std=config["model"]["std"],
                            targets=[classes.index(p) for p in predicted])
