#!/usr/bin/env python
"""Does decoding stay flat in memory as the dataset grows? Synthetic sets of N distinct chest X-rays, decoded cold.

    python benchmarks/scale.py --sizes 5000,20000,50000 --work /tmp/scale

1. Builds (once, in --work/images, reused by later runs) max(sizes) distinct JPEGs by re-encoding the real chest
   X-rays of --data with small random changes: a crop of up to 8% a side, brightness x0.9-1.1, JPEG quality 75-95.
   The set of size N is the first N of them.
2. For each size, in a fresh child process (so that its peak RSS is its own) and with an empty cache:
   load_images(N files, --image-size, cache_dir=...) as `transferlab train` calls it - hashing, decoding in
   worker processes, writing the memory-mapped cache - then the same call again, found in the disk cache;
   with --features K, also the `features` strategy's backbone pass (EfficientNet-Lite0) over K of the images,
   read from the memory-mapped cache and written to the memory-mapped feature cache.
3. Prints decode img/s, peak RSS of the decoding process and of its largest worker, and disk use per size, and
   finally one line:
     SUMMARY rss_ratio_<largest>_<smallest>=<peak RSS ratio> decode_img_per_s_<largest>=<x> cache_gb_<largest>=<y>
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
DEFAULT_DATA = HERE.parents[2] / "shared" / "data" / "chest_xray"
PER_FOLDER = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="5000,20000,50000", help="dataset sizes, comma-separated (default: %(default)s)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the synthetic images and the caches")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="real images to re-encode (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=224, help="decoded side in pixels (default: %(default)s)")
    parser.add_argument("--processes", type=int, default=None,
                        help="decoding processes (default: load_images' own choice, one per CPU up to 8)")
    parser.add_argument("--features", type=int, default=0,
                        help="also run the features pass over this many images per size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random re-encoding (default: %(default)s)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)   # internal: measure one size
    args = parser.parse_args()
    if args.child is not None:
        return measure(args)

    sizes = sorted(int(s) for s in args.sizes.split(","))
    build_images(args.data, args.work / "images", sizes[-1], args.seed)
    rows = []
    for n in sizes:
        cache = args.work / f"cache-{n}"
        shutil.rmtree(cache, ignore_errors=True)   # cold: decode every image
        command = [sys.executable, str(HERE), "--work", str(args.work), "--child", str(n),
                   "--image-size", str(args.image_size), "--features", str(args.features)]
        if args.processes:
            command += ["--processes", str(args.processes)]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"size {n} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print_row(rows[-1], header=len(rows) == 1)
        shutil.rmtree(cache, ignore_errors=True)
    big, small = rows[-1], rows[0]
    print(f"SUMMARY rss_ratio_{short(big['images'])}_{short(small['images'])}="
          f"{big['peak_rss_mb'] / small['peak_rss_mb']:.2f} decode_img_per_s_{short(big['images'])}="
          f"{big['decode_img_per_s']:.0f} cache_gb_{short(big['images'])}={big['cache_mb'] / 1024:.2f}")


def short(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def print_row(r: dict, header: bool) -> None:
    if header:
        print(f"{'images':>7} {'decode s':>9} {'img/s':>6} {'cached s':>9} {'peak RSS MB':>12} {'worker RSS MB':>14} "
              f"{'cache MB':>9} {'JPEGs MB':>9} {'features':>9} {'feat. img/s':>12} {'RSS after feat. MB':>19}")
    feats = r.get("features") or {}
    print(f"{r['images']:>7} {r['decode_s']:>9.1f} {r['decode_img_per_s']:>6.0f} {r['cached_s']:>9.1f} "
          f"{r['peak_rss_mb']:>12.0f} {r['worker_peak_rss_mb']:>14.0f} {r['cache_mb']:>9.0f} {r['jpeg_mb']:>9.0f} "
          f"{feats.get('images', 0):>9} {feats.get('img_per_s', 0):>12.0f} {feats.get('peak_rss_mb', 0):>19.0f}",
          flush=True)


# --- the synthetic images ----------------------------------------------------------------------------------

def image_path(folder: Path, i: int) -> Path:
    return folder / f"{i // PER_FOLDER:04d}" / f"x{i:06d}.jpeg"


def build_images(data: Path, folder: Path, n: int, seed: int) -> None:
    sources = sorted(p for split in ("train", "val") for p in (data / split).glob("*/*.jpeg"))
    if not sources:
        sys.exit(f"error: no JPEGs in {data}/train or {data}/val (--data)")
    todo = [i for i in range(n) if not image_path(folder, i).exists()]
    if not todo:
        return
    start = time.perf_counter()
    jobs = [(str(sources[i % len(sources)]), str(image_path(folder, i)), seed, i) for i in todo]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(reencode, jobs, chunksize=64))
    print(f"built {len(todo)} synthetic images in {folder} ({time.perf_counter() - start:.0f} s)", flush=True)


def reencode(job: tuple) -> None:
    from PIL import Image, ImageEnhance

    source, target, seed, i = job
    rng = np.random.default_rng([seed, i])
    img = Image.open(source).convert("L")
    w, h = img.size
    left, top, right, bottom = (rng.uniform(0, 0.08, 4) * [w, h, w, h]).astype(int)
    img = img.crop((left, top, w - right, h - bottom))
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.9, 1.1))
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{target}.tmp"
    img.save(tmp, format="JPEG", quality=int(rng.integers(75, 96)))
    os.replace(tmp, target)   # a build interrupted midway leaves whole files only


# --- one size, in a child process --------------------------------------------------------------------------

def measure(args) -> None:
    from transferlab.data import images

    n, folder, cache = args.child, args.work / "images", args.work / f"cache-{args.child}"
    paths = [image_path(folder, i) for i in range(n)]
    start = time.perf_counter()
    loaded = images.load_images(paths, args.image_size, cache_dir=cache / "images", progress=False,
                                processes=args.processes)
    decode_s = time.perf_counter() - start
    peak_mb = rss_mb(resource.RUSAGE_SELF)   # before anything else could raise it
    images._RECENT.clear()   # as a new run would: hash every file, find the cache on disk
    start = time.perf_counter()
    again = images.load_images(paths, args.image_size, cache_dir=cache / "images", progress=False)
    cached_s = time.perf_counter() - start
    assert again.pixels.shape == loaded.pixels.shape and isinstance(again.pixels, np.memmap)
    row = {"images": n, "decode_s": decode_s, "decode_img_per_s": n / decode_s, "cached_s": cached_s,
           "peak_rss_mb": peak_mb, "worker_peak_rss_mb": rss_mb(resource.RUSAGE_CHILDREN),
           "cache_mb": disk_mb(cache), "jpeg_mb": sum(p.stat().st_size for p in paths) / 2**20,
           "shape": list(loaded.pixels.shape)}
    if args.features:
        row["features"] = features_pass(loaded.pixels[:args.features], cache)
    print(json.dumps(row))


def features_pass(pixels: np.ndarray, cache: Path) -> dict:
    import torch

    from transferlab.models.heads import create_model
    from transferlab.models.registry import get_spec
    from transferlab.strategies import FixedFeatures

    torch.manual_seed(0)
    spec = get_spec("efficientnet_lite0")
    model = create_model("efficientnet_lite0", 2)
    start = time.perf_counter()
    feats = FixedFeatures().features(model, pixels, mean=spec.mean, std=spec.std, device=torch.device("cpu"),
                                     progress=False, cache_dir=cache)
    seconds = time.perf_counter() - start
    return {"images": len(pixels), "img_per_s": len(pixels) / seconds, "dim": feats.shape[1],
            "peak_rss_mb": rss_mb(resource.RUSAGE_SELF)}


def rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024   # Linux: kB


def disk_mb(folder: Path) -> float:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file()) / 2**20


if __name__ == "__main__":
    main()
