"""`train`: dataset folder -> patient-disjoint splits -> pretrained model -> strategy -> fit -> run directory.

Stages, in order (each one a call into its own module):
    1. data      discover the images, carve the splits, decode each image once (cached)
    2. model     the registry builds the ImageNet model and swaps its classifier for a new head
    3. strategy  finetune (whole net, augmented images), features (cached backbone outputs, head only), or lpft
                 (features, then finetune from that head)
    4. fit       Lightning: early stopping and best-epoch selection on validation, checkpoints every epoch;
                 lpft: phase 1 in checkpoints/probe/, phase 2 in checkpoints/; --lr auto: the LR finder first
    5. evaluate  probabilities on val/test, metrics from sklearn; two classes: the decision threshold is chosen
                 on validation only; three or more: the most probable class (argmax)
"""
from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Subset

from .averaging import weight_averaging
from .config import TrainConfig
from .data.discover import DatasetIndex, Sample, discover
from .data.images import load_images, unreadable_error
from .data.transforms import make_augment
from .data.split import Splits, how_made, leakage_warning, make_splits, split_leakage
from .distributed import barrier, every_rank, gather_shards, is_global_zero, launch, rank_zero_first
from .engine import Classifier, FollowHistory, fit, load_best_weights
from .errors import TransferlabError
from .gpu import pin_memory_for
from .evaluation import decide, positive_index, split_metrics
from .inference import predict_probs
from .loaders import class_weights_for, make_loader, whole_epoch_loader, with_index
from .loggers import ExperimentLogs, check_available
from .lrfind import MAX_LR, MIN_LR, STEPS, LRFinding, RangeTest, find_lr, write_finding
from .metrics import choose_threshold
from .models.heads import create_model
from .models.registry import get_spec
from .rundir import RunDir, environment, peak_rss_mb, write_csv, write_json
from .runtime import choose_threads, cpu_threads, resolve_device, reuse_freed_memory, seed_all
from .settings import changed_settings, in_callers_words
from .strategies import get_strategy
from .unfreezing import FrozenBatchNorm, GradualUnfreezing, param_groups as block_param_groups


def cache_dir(cfg: TrainConfig) -> Path:
    """Decoded images and features are cached here: --cache-dir, $TRANSFERLAB_CACHE, ~/.cache/transferlab."""
    return Path(cfg.cache_dir or os.environ.get("TRANSFERLAB_CACHE") or Path.home() / ".cache" / "transferlab")


@dataclass
class Prepared:
    """Everything a run needs from the data stage."""
    index: DatasetIndex
    splits: Splits
    pixels: dict[str, np.ndarray]          # split -> uint8 (N, C, H, W), memory-mapped from the decode cache
    samples: dict[str, list[Sample]]       # split -> the samples behind those rows (bad files removed)
    bad: list[tuple[str, str]]
    decode_seconds: float
    shared: dict[str, dict]                # "val"/"test" -> what it shares with train (data.split.shared_with_train)

    def leakage_warnings(self) -> list[str]:
        return [line for name, shared in self.shared.items()
                if (line := leakage_warning(name, shared, how_made(self.splits, name)))]

    def labels(self, split: str) -> np.ndarray:
        return np.array([s.label for s in self.samples[split]], dtype=np.int64)


def prepare_data(cfg: TrainConfig, image_size: int) -> Prepared:
    start = time.perf_counter()
    index = discover(cfg.data, patient_pattern=cfg.patient_pattern, manifest=cfg.manifest)
    if len(index.classes) < 2:
        raise TransferlabError(f"{cfg.data}: need at least two classes, found {index.classes}")
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    splits = make_splits(index, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                         seed=split_seed, official_val=cfg.official_val)
    samples = {name: _subsample(getattr(splits, name), cfg.max_images, split_seed) for name in ("train", "val", "test")}
    pixels, bad, total = {}, [], sum(len(ss) for ss in samples.values())
    for name, split_samples in samples.items():
        if not split_samples:
            continue
        loaded = load_images([s.path for s in split_samples], image_size, preprocess=cfg.preprocess,
                             cache_dir=cache_dir(cfg) / "images",
                             skip_bad=True, progress=cfg.progress)
        pixels[name] = loaded.pixels
        samples[name] = [split_samples[i] for i in loaded.kept]
        bad += loaded.bad
    if bad and not cfg.skip_bad:   # one error that counts the unreadable files of every split
        raise unreadable_error(bad, total)
    for name, need in (("train", 2), ("val", 2), ("test", 1 if "test" in pixels else 0)):
        if len({s.label for s in samples[name]}) < need:
            raise TransferlabError(f"the {name} split needs readable images{' of every class' * (need > 1)}"
                                   f"{f' ({len(bad)} unreadable images were skipped)' if bad else ''}; "
                                   f"check --data, --val-fraction and --max-images")
    return Prepared(index, splits, pixels, samples, bad, time.perf_counter() - start, split_leakage(splits))


def _subsample(samples: list[Sample], n: int | None, seed: int) -> list[Sample]:
    """A class-stratified random subset of at most n images (for quick trials and tests)."""
    if n is None or len(samples) <= n:
        return samples
    rng = np.random.default_rng(seed)
    labels = np.array([s.label for s in samples])
    keep = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        take = max(1, round(n * len(idx) / len(samples)))
        keep += rng.choice(idx, size=min(take, len(idx)), replace=False).tolist()
    return [samples[i] for i in sorted(keep)]


@in_callers_words
def train(config: TrainConfig | None = None, **settings) -> RunDir:
    """Train one model with one strategy; returns the run directory (see README for its layout).

    >>> run = train(data="chest_xray", model="efficientnet_lite0", strategy="features", out="runs/lite0")
    """
    cfg = config or TrainConfig(**settings)
    if not cfg.out:
        raise TransferlabError("--out is required: the run directory to write")
    run = RunDir(cfg.out)
    check_available(cfg.logger)
    if cfg.overwrite and (run.config.exists() or run.resumable()):   # a run directory: gone, then made afresh
        shutil.rmtree(run.path)
    if run.finished():
        if cfg.resume:
            ExperimentLogs(run, cfg.logger, cfg.experiment).log_finished_run()
            return run
        raise TransferlabError(f"{run.path} already holds a finished run; choose another --out, or add --overwrite "
                               f"to replace it")
    if run.resumable() and not cfg.resume:
        raise TransferlabError(f"{run.path} holds an unfinished run; add --resume to continue it or --overwrite to "
                               f"start again, or choose another --out")
    device = launch(resolve_device(cfg.device), cfg.devices, cfg.num_nodes)   # DDP: from here on, every process
    created = _first_missing(run.path)
    run.path.mkdir(parents=True, exist_ok=True)
    try:
        with reuse_freed_memory(enabled=device.type == "cpu"), cpu_threads(choose_threads(cfg.threads)):
            _train(cfg, run, device)
    except BaseException:
        # an error before the first epoch's checkpoint (no data, unknown model, missing weights, ...) leaves
        # nothing behind that this call created; after it, the run directory stays for --resume
        if created is not None and not run.resumable() and is_global_zero():
            shutil.rmtree(created, ignore_errors=True)
        raise
    return run


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what mkdir(parents=True) creates), or None."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _train(cfg: TrainConfig, run: RunDir, device: torch.device) -> None:
    total_start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # 1. data
    spec = get_spec(cfg.model, cfg.weights)
    size = cfg.image_size or spec.input_size
    with rank_zero_first():   # DDP: rank 0 fills the image cache, the others read it
        data = prepare_data(cfg, size)
    started = run.read_config() if cfg.resume and run.config.exists() else None
    if started:
        _check_same_run(started, run, cfg, data)
    found = (started or {}).get("lr_find")   # --lr auto: the finder's result, kept when the run resumes
    classes = data.index.classes
    if cfg.init:
        _check_init_classes(cfg.init, classes)
    pos = positive_index(classes, cfg.positive_class)
    if is_global_zero():   # only rank 0 writes the run directory and warns
        _write_run_start(run, cfg, data, spec, size, pos, device, lr_find=found)
    skipped = data.index.skipped if is_global_zero() else []
    if skipped:
        _warn(f"left out {len(skipped)} file{'s' * (len(skipped) > 1)} that are not images of a class: "
              + "; ".join(f"{path} ({reason})" for path, reason in skipped[:3])
              + ("; ... (`transferlab check-data` lists them all)" if len(skipped) > 3 else ""))
    if data.bad and is_global_zero():
        _warn(f"skipped {len(data.bad)} unreadable image{'s' * (len(data.bad) > 1)} (listed in {run.bad_files})")
    for line in data.leakage_warnings() if is_global_zero() else []:
        _warn(line)

    # 2. model, 3. strategy
    model, strategy, encode = _model_and_strategy(cfg, spec, len(classes), device)

    # 4. fit (lpft: phase 1, the head on cached features, then phase 2 from its best head)
    logs = ExperimentLogs(run, cfg.logger if is_global_zero() else [], cfg.experiment)   # DDP: rank 0 logs
    follow = [FollowHistory(logs.update, logs.stopped)] if logs.names else []
    history, prepare_seconds, fit_seconds, seconds, probe_from_cache = [], 0.0, 0.0, {}, False
    if strategy.probe is not None:
        history, prepare_seconds, fit_seconds, probe_from_cache = _probe(cfg, model, strategy, data, encode, device,
                                                                         run.checkpoints / "probe", follow)
    lr = cfg.lr
    if lr == "auto":
        if not found:
            finding = _find_lr(cfg, model, strategy, data, encode, device, run.checkpoints)
            found = _record_lr_find(run, cfg, finding)
            seconds["lr_find"] = finding.seconds
        lr = found["suggested_lr"]
    stage = _stage(cfg, model, strategy, data, encode, device, lr=lr, epochs=cfg.epochs, history=history,
                   phase="finetune" if strategy.probe else None)
    fit_start = time.perf_counter()
    fitted = _fit(cfg, stage, run.checkpoints, device, follow, epochs=cfg.epochs, patience=cfg.patience)
    fit_seconds += time.perf_counter() - fit_start
    prepare_seconds += stage.prepare_seconds
    net, inputs, module = stage.net, stage.inputs, stage.module
    if is_global_zero():
        write_csv(run.history, module.history)

    # 5. evaluate: the threshold comes from validation predictions only. DDP: each rank predicts its shard
    eval_start = time.perf_counter()
    predicted = {}   # split -> images this process predicted

    def predict_part(name: str, part: slice) -> torch.Tensor:
        shard_probs = predict_probs(net, _part(inputs[name], part), batch_size=cfg.batch_size, device=device,
                                    channels_last=strategy.channels_last, progress=cfg.progress,
                                    desc=f"predict {name}")
        predicted[name] = len(shard_probs)
        return torch.from_numpy(shard_probs)

    probs = {name: gather_shards(lambda part: predict_part(name, part), len(inputs[name])).numpy() for name in inputs}
    ranks = every_rank({"images_trained": module.images_trained, "images_predicted": predicted})
    if not is_global_zero():
        barrier()   # returns once rank 0 has written the results: every process returns a finished run
        return
    binary = pos is not None
    threshold = (choose_threshold((data.labels("val") == pos).astype(int), probs["val"][:, pos], cfg.threshold_method)
                 if binary else None)
    metrics = {name: split_metrics(data.labels(name), probs[name], pos, threshold, classes) for name in probs}
    eval_seconds = time.perf_counter() - eval_start

    model.cpu()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run.weights))
    write_csv(run.predictions, [
        {"split": name, "file": str(s.path.relative_to(data.index.root)) if s.path.is_relative_to(data.index.root) else str(s.path),
         "label": classes[s.label], **{f"prob_{c}": float(v) for c, v in zip(classes, p)}, "predicted": classes[k]}
        for name in probs for s, p, k in zip(data.samples[name], probs[name], decide(probs[name], pos, threshold))])
    summary = {
        "classes": classes, "positive_class": classes[pos] if binary else None, "threshold": threshold,
        "threshold_method": cfg.threshold_method if binary else None, "threshold_chosen_on": "val" if binary else None,
        "decision": (f"{classes[pos]} when prob_{classes[pos]} >= threshold (chosen on val), else {classes[1 - pos]}"
                     if binary else "argmax: the most probable class (no threshold)"),
        "best_epoch": fitted["best_epoch"], "epochs_run": fitted["stopped_epoch"], "monitor": cfg.monitor,
        "seconds": {"decode": data.decode_seconds, "prepare": prepare_seconds, "fit": fit_seconds,
                    "evaluate": eval_seconds, **seconds, "total": time.perf_counter() - total_start},
        # the frozen backbone's outputs read from the cache (an earlier run's): prepare and total are then no
        # measure of what the strategy costs, and the report leaves them out of its timing comparisons
        "features_from_cache": stage.features_from_cache or probe_from_cache,
        "peak_rss_mb": peak_rss_mb(),
        "cuda_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "trainable_params": sum(p.numel() for p in net.parameters()),
        "total_params": sum(p.numel() for p in model.parameters()),
        **metrics,
    }
    write_json(run.ranks, {"world_size": len(ranks), "ranks": [{"rank": r, **done} for r, done in enumerate(ranks)]})
    write_json(run.metrics, summary)
    logs.update(module.history, summary)
    logs.close()
    barrier()


def _check_init_classes(init: str, classes: list[str]) -> None:
    started_from = RunDir(init).read_config()["data"]["classes"]
    if classes != started_from:
        raise TransferlabError(f"--init {init} was trained on the classes {', '.join(started_from)}; the data has "
                               f"{', '.join(classes)}")


def _model_and_strategy(cfg: TrainConfig, spec, num_classes: int, device: torch.device) -> tuple:
    """The seeded model with its new head (or, with --init, the finished run's model and head), the strategy,
    and how images are encoded for it."""
    seed_all(cfg.seed)
    model = create_model(cfg.model, num_classes, weights="none" if cfg.init else cfg.weights,
                         weights_dir=cfg.weights_dir, head_dropout=cfg.head_dropout)
    if cfg.init:
        model.load_state_dict(load_file(str(RunDir(cfg.init).weights)))
    encode = dict(mean=spec.mean, std=spec.std, device=device, progress=cfg.progress, cache_dir=cache_dir(cfg))
    return model, get_strategy(cfg.strategy), encode


@dataclass
class Stage:
    """A strategy set up on a model: what trains, its inputs per split, its LightningModule and loaders."""
    net: torch.nn.Module
    inputs: dict
    module: Classifier
    loaders: tuple
    callbacks: list
    prepare_seconds: float
    features_from_cache: bool   # features read from the disk cache: prepare_seconds lacks the backbone's pass


def _stage(cfg: TrainConfig, model, strategy, data: Prepared, encode: dict, device: torch.device, *, lr: float,
           epochs: int, history: list[dict] = (), phase: str | None = None, finder: bool = False) -> Stage:
    """`strategy` on `model` with learning rate `lr`. finder: a RangeTest module on ordinary mini-batch loaders
    (cached features too), without the unfreezing schedule (BatchNorm statistics frozen or not, as in training)."""
    net = strategy.trainable(model)
    start = time.perf_counter()
    inputs = {name: strategy.dataset(model, data.pixels[name], data.labels(name), **encode) for name in data.pixels}
    augment = make_augment(cfg.augment, data.pixels["train"].shape[-1], cfg.augment_strength)
    views = 1 if strategy.augments else cfg.feature_views   # features: augmented views, each cached
    train_set = (strategy.dataset(model, data.pixels["train"], data.labels("train"), augment=augment, views=views,
                                  seed=cfg.seed, **encode)
                 if augment is not None and (strategy.augments or views > 1) else inputs["train"])
    prepare_seconds = time.perf_counter() - start
    cached = strategy.cached and not finder   # cached features: each epoch is one batch, split by the step itself
    gradual = cfg.unfreeze == "gradual" and not strategy.cached
    train_labels = np.tile(data.labels("train"), len(train_set) // len(data.labels("train")))   # one per view
    weights = class_weights_for(train_labels, len(data.index.classes))
    groups = (block_param_groups(model, lr, cfg.backbone_lr_factor, cfg.block_lr_decay) if gradual
              else strategy.param_groups(model, lr, cfg.backbone_lr_factor))
    module = (RangeTest if finder else Classifier)(
        net, groups, class_weights=weights if cfg.balance == "weights" else None,
        epochs=epochs, weight_decay=cfg.weight_decay, seed=cfg.seed, channels_last=strategy.channels_last,
        label_smoothing=cfg.label_smoothing, minibatch=cfg.batch_size if cached else None,
        **({} if strategy.cached else {"mixup": cfg.mixup, "cutmix": cfg.cutmix}),   # images only: not lpft's probe
        sample_weights=weights if cfg.balance == "sampler" else None, history=history, phase=phase)
    if strategy.channels_last:
        net.to(memory_format=torch.channels_last)
    if cfg.compile and not finder and phase != "probe":
        net.compile()   # in place: the state_dict keys, checkpoints and model.safetensors stay as without it
    loaders = make_loaders(cfg, train_set, train_labels, inputs["val"], device, cached=cached)
    callbacks = [GradualUnfreezing(model, cfg.unfreeze_every)] if gradual and not finder else []
    if cfg.batchnorm == "frozen" and not strategy.cached:
        callbacks.append(FrozenBatchNorm(model))
    if not finder and not strategy.cached:
        callbacks += weight_averaging(cfg.weight_averaging, epochs)
    return Stage(net, inputs, module, loaders, callbacks, prepare_seconds,
                 features_from_cache=strategy.cached and strategy.cache_hits > 0)


def _fit(cfg: TrainConfig, stage: Stage, checkpoint_dir: Path, device: torch.device, callbacks: list, *,
         epochs: int, patience: int) -> dict:
    """fit() the stage, then load its best epoch's weights (chosen on validation)."""
    fitted = fit(stage.module, *stage.loaders, checkpoint_dir=checkpoint_dir, epochs=epochs, monitor=cfg.monitor,
                 patience=patience, device=device, precision=_precision(cfg.precision, device), resume=cfg.resume,
                 progress=cfg.progress, devices=cfg.devices, num_nodes=cfg.num_nodes,
                 callbacks=[*callbacks, *stage.callbacks])
    if fitted["best_checkpoint"]:
        load_best_weights(stage.module, fitted["best_checkpoint"])
    return fitted


def _probe(cfg: TrainConfig, model, strategy, data: Prepared, encode: dict, device: torch.device,
           checkpoint_dir: Path, callbacks: list = ()) -> tuple[list[dict], float, float, bool]:
    """lpft phase 1: `features` on `model` for --probe-epochs at --probe-lr, every epoch run (no early stopping:
    an epoch on cached features takes milliseconds); its best head on validation is left in the model. Returns
    the phase's history rows, its prepare and fit seconds and whether its features came from the cache."""
    stage = _stage(cfg, model, strategy.probe(), data, encode, device, lr=cfg.probe_lr, epochs=cfg.probe_epochs,
                   phase="probe")
    start = time.perf_counter()
    _fit(cfg, stage, checkpoint_dir, device, list(callbacks), epochs=cfg.probe_epochs, patience=cfg.probe_epochs)
    return stage.module.history, stage.prepare_seconds, time.perf_counter() - start, stage.features_from_cache


def _find_lr(cfg: TrainConfig, model, strategy, data: Prepared, encode: dict, device: torch.device, root: Path, *,
             min_lr: float = MIN_LR, max_lr: float = MAX_LR, steps: int = STEPS) -> LRFinding:
    """The range test on a copy of `model`: training then starts from the model exactly as it was."""
    stage = _stage(cfg, copy.deepcopy(model), strategy, data, encode, device, lr=1.0, epochs=cfg.epochs, finder=True)
    return find_lr(stage.module, stage.loaders[0], device=device, precision=_precision(cfg.precision, device),
                   root=root, min_lr=min_lr, max_lr=max_lr, steps=steps, progress=cfg.progress,
                   callbacks=stage.callbacks)


def _finder_title(cfg: TrainConfig) -> str:
    return f"{cfg.model} {cfg.strategy}, seed {cfg.seed}: learning-rate range test"


def _record_lr_find(run: RunDir, cfg: TrainConfig, finding: LRFinding) -> dict:
    """--lr auto: the finder's files in the run directory and its result in config.json (`lr_find`)."""
    write_finding(finding, run.path, title=_finder_title(cfg))
    config = run.read_config()
    config["lr_find"] = finding.summary()
    write_json(run.config, config)
    if cfg.progress:
        print(f"--lr auto: the LR finder suggests {finding.suggested_lr:.3g} ({finding.steps_run} steps, "
              f"{finding.seconds:.0f} s; {run.path / 'lr_find.png'})", file=sys.stderr, flush=True)
    return config["lr_find"]


@in_callers_words
def lr_find(config: TrainConfig | None = None, *, min_lr: float = MIN_LR, max_lr: float = MAX_LR,
            steps: int = STEPS, **settings) -> LRFinding:
    """Lightning's learning-rate range test for these training settings, from the model as `train` would start
    (lpft: after its phase 1); the suggestion is for `lr`. With `out`, writes lr_find.png, lr_find.csv and
    lr_find.json there.

    >>> lr_find(data="chest_xray", model="efficientnet_lite0", strategy="finetune", out="lr-lite0").suggested_lr
    """
    cfg = config or TrainConfig(**settings)
    if cfg.devices * cfg.num_nodes > 1:
        raise TransferlabError("the LR finder runs in one process: leave out --devices and --num-nodes")
    device = resolve_device(cfg.device)
    with reuse_freed_memory(enabled=device.type == "cpu"), cpu_threads(choose_threads(cfg.threads)), \
            tempfile.TemporaryDirectory(prefix="transferlab-lr-find-") as tmp:
        spec = get_spec(cfg.model, cfg.weights)
        data = prepare_data(cfg, cfg.image_size or spec.input_size)
        model, strategy, encode = _model_and_strategy(cfg, spec, len(data.index.classes), device)
        if strategy.probe is not None:
            _probe(cfg, model, strategy, data, encode, device, Path(tmp) / "probe")
        finding = _find_lr(cfg, model, strategy, data, encode, device, Path(tmp), min_lr=min_lr, max_lr=max_lr,
                           steps=steps)
    if cfg.out:
        write_finding(finding, Path(cfg.out), title=_finder_title(cfg))
    return finding


def _part(dataset, part: slice):
    """The rows `part` (distributed.shard) of `dataset`; all of them: the dataset itself."""
    return dataset if part == slice(None) else Subset(dataset, range(len(dataset))[part])


def make_loaders(cfg: TrainConfig, train_set, train_labels: np.ndarray, val_set, device: torch.device, *,
                 cached: bool) -> tuple:
    """(train, validation) loaders. cached (features on cached backbone outputs): each epoch is one batch that
    Classifier(minibatch=cfg.batch_size) splits itself, and validation is one batch; else ordinary loaders.
    DDP: cfg.batch_size is the global batch, split over the processes (cached: every process trains the head on
    all features, one global batch at a time)."""
    workers = cfg.num_workers if cfg.num_workers is not None else (0 if device.type == "cpu" or cached
                                                                   else min(8, os.cpu_count() or 1))
    replicas = cfg.devices * cfg.num_nodes
    args = dict(batch_size=-(-cfg.batch_size // replicas), num_workers=workers, replicas=replicas)
    val_set = with_index(val_set)
    if cached:
        return whole_epoch_loader(train_set), make_loader(val_set, None, shuffle=False, pin_memory=False,
                                                          **(args | {"batch_size": len(val_set)}))
    return (make_loader(train_set, train_labels, shuffle=True, balance=cfg.balance,
                        pin_memory=pin_memory_for(train_set, device), **args),
            make_loader(val_set, None, shuffle=False, pin_memory=pin_memory_for(val_set, device), **args))


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _check_same_run(started: dict, run: RunDir, cfg: TrainConfig, data: Prepared) -> None:
    """--resume continues a run only with the settings that change results and the data it was started with
    (`started`: its config.json; the data is compared by its fingerprint, not by its path)."""
    changed = changed_settings(started["settings"], cfg.to_dict())
    if started["data"]["fingerprint"] != data.index.fingerprint():
        changed.append("the data's files differ")
    if changed:
        raise TransferlabError(f"cannot resume {run.path} with other settings or data ({'; '.join(changed)}); "
                               f"use the original options, or choose another --out")


def _precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def _write_run_start(run: RunDir, cfg: TrainConfig, data: Prepared, spec, size: int, pos: int, device, *,
                     lr_find: dict | None = None) -> None:
    """config.json and splits.csv are written before training, so an interrupted run still documents itself
    (`lr_find`: the LR finder's result of a resumed --lr auto run)."""
    root = data.index.root
    write_json(run.config, {
        "settings": cfg.to_dict(),
        "model": {"name": spec.name, "weights": cfg.weights, "weights_name": spec.weights_name if cfg.weights != "none" else None,
                  "image_size": size, "preprocess": cfg.preprocess, "mean": list(spec.mean),
                  "std": list(spec.std)},
        "data": {"root": str(root), "fingerprint": data.index.fingerprint(), "classes": data.index.classes,
                 "positive_class": None if pos is None else data.index.classes[pos], "splits": data.splits.method,
                 "counts": {name: np.bincount([s.label for s in ss], minlength=len(data.index.classes)).tolist()
                            for name, ss in data.samples.items()},
                 "skipped_at_discovery": len(data.index.skipped), "bad_files_skipped": len(data.bad),
                 "shared_with_train": data.shared},
        "device": str(device),
        "environment": environment(),
        **({"lr_find": lr_find} if lr_find else {}),
    })
    write_csv(run.splits, [{"split": name, "file": str(s.path.relative_to(root)) if s.path.is_relative_to(root) else str(s.path),
                            "label": data.index.classes[s.label], "patient": s.patient if s.patient_known else ""}
                           for name, ss in data.samples.items() for s in ss])
    if data.bad:
        write_csv(run.bad_files, [{"file": f, "reason": r} for f, r in data.bad])
