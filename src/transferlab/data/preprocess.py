"""Intensity normalisation at input (--preprocess), applied to each decoded, resized uint8 image before it is
cached, so that training, evaluation, prediction and Grad-CAM all see the same pixels; an export's sidecar names
it (it is not part of the ONNX graph).

equalize: global histogram equalisation (OpenCV equalizeHist); clahe: contrast-limited adaptive histogram
equalisation (OpenCV, clip limit CLAHE_CLIP, CLAHE_TILES x CLAHE_TILES tiles). A colour image is processed one
channel at a time. OpenCV is already a dependency of grad-cam; it is the reference implementation of both."""
from __future__ import annotations

import numpy as np

PREPROCESSING = ("none", "equalize", "clahe")
CLAHE_CLIP, CLAHE_TILES = 2.0, 8


def describe(name: str) -> str:
    """What `name` does, in the words an export's sidecar gives a deployer."""
    return {"none": "none",
            "equalize": "histogram equalisation of each channel (OpenCV cv2.equalizeHist), after resizing",
            "clahe": f"CLAHE on each channel (OpenCV cv2.createCLAHE(clipLimit={CLAHE_CLIP}, "
                     f"tileGridSize=({CLAHE_TILES}, {CLAHE_TILES})).apply), after resizing"}[name]


def preprocess(image: np.ndarray, name: str) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) -> the same shape, normalised by `name` (one of PREPROCESSING)."""
    if name == "none":
        return image
    import cv2

    if name == "equalize":
        apply = cv2.equalizeHist
    elif name == "clahe":
        apply = cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=(CLAHE_TILES, CLAHE_TILES)).apply
    else:
        raise ValueError(f"unknown preprocessing {name!r}; known: {', '.join(PREPROCESSING)}")
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim == 2:
        return apply(image)
    return np.stack([apply(np.ascontiguousarray(image[..., c])) for c in range(image.shape[-1])], axis=-1)


def of_run(config: dict) -> str:
    """The preprocessing a run's images went through (its config.json; runs older than --preprocess: none)."""
    return config["model"].get("preprocess", "none")
