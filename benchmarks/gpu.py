#!/usr/bin/env python
"""GPU throughput of fine-tuning and feature extraction: fp32 vs mixed precision vs channels_last vs torch.compile.

    python benchmarks/gpu.py                          # ResNet-50, 224 px, batch 64, on cuda:0
    python benchmarks/gpu.py --compile --json benchmarks/results/gpu.json

Needs a CUDA GPU; elsewhere it says so and exits (status 2) without measuring anything.

Images are synthetic uint8 grayscale chest-X-ray-sized tensors (the cost of a step does not depend on pixel
values; weights are random for the same reason, so it runs offline). They sit in pinned host memory and go to the
GPU as transferlab's engine sends them (gpu.to_device: pinned, non-blocking), are normalised there, and:
  finetune   AdamW steps of the whole ResNet-50 (forward, backward, optimizer), images/s, for
             fp32 | amp (bf16 autocast where supported, else fp16 with a GradScaler) | amp+channels_last
             | amp+channels_last+compile (--compile; the first, compiling steps are excluded)
  features   transferlab.strategies.extract_features (BatchNorm-folded backbone, autocast, channels_last), images/s
GPU utilisation is sampled every 0.1 s while each mode runs (torch.cuda.utilization, i.e. NVML; nvidia-smi where
that is missing); peak memory from torch.cuda.max_memory_allocated. Prints a table and
    SUMMARY fp32=<img/s> amp=<img/s> amp_cl=<img/s> [amp_cl_compile=<img/s>] features=<img/s> gpu=<name>
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=30, help="timed training steps per mode (after --warmup)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--feature-images", type=int, default=2048)
    p.add_argument("--compile", action="store_true", help="also time amp+channels_last under torch.compile")
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("error: benchmarks/gpu.py needs a CUDA GPU, and torch.cuda.is_available() is False on this machine; "
              "nothing was measured", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True

    from transferlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
    from transferlab.gpu import to_device
    from transferlab.models.heads import create_model
    from transferlab.strategies import extract_features

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 1, args.image_size, args.image_size), dtype=torch.uint8,
                           generator=gen).pin_memory()
    labels = torch.randint(0, 2, (args.batch_size,), generator=gen)
    amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    modes = [("fp32", None, False, False), ("amp", amp_dtype, False, False), ("amp_cl", amp_dtype, True, False)]
    if args.compile:
        modes.append(("amp_cl_compile", amp_dtype, True, True))

    results = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "model": args.model,
               "batch_size": args.batch_size, "image_size": args.image_size, "amp_dtype": str(amp_dtype), "modes": {}}
    for name, dtype, channels_last, compiled in modes:
        model = create_model(args.model, 2, weights="none").to(device).train()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        step_model = torch.compile(model) if compiled else model
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

        def step():
            x = normalize(to_device(images, device), IMAGENET_MEAN, IMAGENET_STD)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = to_device(labels, device)
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = torch.nn.functional.cross_entropy(step_model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        for _ in range(args.warmup + (3 if compiled else 0)):
            step()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        with Utilisation(device) as util:
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
        results["modes"][name] = {"images_per_s": args.steps * args.batch_size / seconds,
                                  "gpu_util_pct": util.mean(), "peak_mb": torch.cuda.max_memory_allocated(device) / 2**20}
        del model, step_model, optimizer

    model = create_model(args.model, 2, weights="none").eval()
    pixels = torch.randint(0, 256, (args.feature_images, 1, args.image_size, args.image_size), dtype=torch.uint8,
                           generator=gen).numpy()
    extract_features(model, pixels[:args.batch_size], mean=IMAGENET_MEAN, std=IMAGENET_STD, device=device,
                     progress=False, batch_size=args.batch_size)   # warm-up: cuDNN autotuning, BatchNorm folding
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    with Utilisation(device) as util:
        start = time.perf_counter()
        extract_features(model, pixels, mean=IMAGENET_MEAN, std=IMAGENET_STD, device=device, progress=False,
                         batch_size=args.batch_size)
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    results["modes"]["features"] = {"images_per_s": args.feature_images / seconds, "gpu_util_pct": util.mean(),
                                    "peak_mb": torch.cuda.max_memory_allocated(device) / 2**20}

    print(f"{args.model}, {args.image_size} px, batch {args.batch_size}, {results['gpu']}, torch {torch.__version__}")
    print(f"{'mode':<16}{'images/s':>10}{'GPU util %':>12}{'peak MB':>10}")
    for name, r in results["modes"].items():
        util = "n/a" if r["gpu_util_pct"] is None else f"{r['gpu_util_pct']:.0f}"
        print(f"{name:<16}{r['images_per_s']:>10.0f}{util:>12}{r['peak_mb']:>10.0f}")
    print("SUMMARY " + " ".join(f"{k}={v['images_per_s']:.0f}" for k, v in results["modes"].items())
          + f" gpu={results['gpu'].replace(' ', '_')}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


class Utilisation:
    """Samples the GPU's utilisation (%) every 0.1 s on a thread while the block runs."""

    def __init__(self, device: torch.device):
        self.index = device.index if device.index is not None else torch.cuda.current_device()
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _read(self) -> float | None:
        try:
            return float(torch.cuda.utilization(self.index))   # NVML, through pynvml / nvidia-ml-py
        except Exception:
            try:
                out = subprocess.run(["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                return float(out.stdout.strip())
            except (OSError, ValueError, subprocess.SubprocessError):
                return None

    def _loop(self):
        while not self._stop.wait(0.1):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


if __name__ == "__main__":
    sys.exit(main())
