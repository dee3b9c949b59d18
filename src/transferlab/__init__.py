"""transferlab: which ImageNet-pretrained ConvNet and transfer strategy works best on your images.

The public API (imported on first use, so that `transferlab --help` stays fast):

    train(data=..., model=..., strategy=..., out=...) -> RunDir      one model, one strategy (finetune, features, lpft)
    lr_find(data=..., model=..., strategy=..., out=...) -> LRFinding the LR range test; train(lr="auto") runs it
    evaluate(run_dir, split="test") -> dict                          metrics of a finished run (or an ensemble directory)
    evaluate(run_dir, data="other/", adapt=["prior"]) -> dict        ... on any set of images, with shift estimates
    load_model(run_dir) -> (TransferModel, config)                   the trained model, safely loaded
    create_model(name, num_classes, weights="default")               an ImageNet model with a new head
    catalog(names, measure=True) -> list[CatalogEntry]               Task A: the model table
    run_study(StudyConfig(data=..., models=[...], out=...)) -> Path  Tasks B-E and report.html
    run_study(StudyConfig(..., launch=LaunchSettings("slurm")))      ... each run a Slurm array task (or "local")
    run_study(StudyConfig(..., ensemble=3, tta=4))                   ... with an ensemble, and test-time augmentation
    plan_commands(study) -> [str] / collect_study(study) -> Path     ... runs executed by any other scheduler
    predict(run_dir, paths, cam=False) / export(run_dir, "onnx")     use a trained model (or an ensemble directory)
    ensemble(run_dirs, out, k=3) -> RunDir                           the mean of the K runs best on validation
    run_demo(out="demo-out")                                         the whole study on the bundled sample
    check_data(root) -> DataReport                                   every problem of a dataset folder
    TrainConfig                                                      every training setting

No submodule carries the name of a public function (the functions live in `training`, `evaluation`,
`model_catalog`, `prediction`, `exporting`, ...): importing a submodule sets it as an attribute of the package,
which would otherwise replace the function after its first use (tests/test_api.py checks this).

Errors name settings as keywords here (`out=`, `overwrite=True`) and as flags on the command line (`--out`): the
same message, in the caller's words (settings.in_callers_words).
"""
from importlib import import_module
from inspect import isfunction

__version__ = "0.1.0"

_API = {
    "train": "training", "lr_find": "training", "TrainConfig": "config", "evaluate": "analysis.external",
    "load_model": "evaluation",
    "create_model": "models.heads", "list_models": "models.registry", "get_spec": "models.registry",
    "catalog": "model_catalog.build", "run_study": "study.run", "StudyConfig": "study.config", "write_report": "report",
    "predict": "prediction", "export": "exporting", "run_demo": "demo", "check_data": "data.check",
    "RunDir": "rundir", "TransferlabError": "errors", "ensemble": "ensembles", "plan_commands": "study.plan",
    "collect_study": "study.run", "LaunchSettings": "launchers",
}


def __getattr__(name):
    if name in _API:
        value = getattr(import_module(f".{_API[name]}", __name__), name)
        if isfunction(value):   # its errors name keywords (out=), not the command line's flags (--out)
            value = import_module(".settings", __name__).in_callers_words(value)
        globals()[name] = value      # later look-ups skip this function
        return value
    raise AttributeError(f"module 'transferlab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))


__all__ = sorted(_API)
