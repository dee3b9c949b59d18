"""`study`: every model x strategy x seed through `train`, then the catalogue, the tables, the analysis and the report.

    transferlab study --data chest_xray --models resnet50,mobilenet_v3_large --strategies finetune,features \
        --seeds 3 --out studies/hw4

Layout of a study folder:

    study.yaml      the study's settings, resolved (re-run exactly with `transferlab study OUT/study.yaml`)
    study.json      what happened: the runs, notes (e.g. the test split the study carved), wall time
    runs/{model}-{strategy}-seed{k}/   one ordinary run directory each (see rundir.py)
    catalog/        catalog.csv/json/png for the study's models (Task A)
    results.csv     one row per run: every metric of every split, flattened
    summary.csv     mean and sd over seeds per model x strategy
    report.html     the self-contained report; report.md the same tables in Markdown
    analysis.json   the measured numbers behind every finding of the report
    ensemble-topK/  --ensemble K: the mean of the K runs best on validation, an ensemble directory (ensembles.py)
    runs/*/eval-{val,test}-tta.json   --tta N: each run scored with N-view test-time augmentation (`evaluate`)
    jobs/           --launcher local|slurm: submitit's files and each run's log (JOBID_0_log.out/.err)
    plan/           --plan: one settings file per run, read by the printed `transferlab train --config` commands

A study file (`transferlab study study.yaml`; command-line options override it) holds the same settings:

    data: ../shared/data/chest_xray
    models: [resnet50, mobilenet_v3_large]
    strategies: [finetune, features]
    seeds: 3                    # or a list: [0, 1, 2]
    out: studies/hw4
    split_seed: 0
    measure_catalog: true
    train: {epochs: 5, lr: 0.001}             # any `transferlab train` setting, for every run
    model_overrides: {resnet50: {batch_size: 16}}
    external: [../hospital_b, ../official/test]   # every run is also scored on these (section E)
    adapt: prior,bn                           # label-free adaptation reported beside them
    ensemble: 3                               # also the mean of the 3 runs best on validation (STUDY/ensemble-top3)
    tta: 4                                    # every run (and the ensemble) also scored with 4-view test-time augmentation
    launch: {launcher: slurm, partition: gpu, time_min: 120, gpus_per_task: 1}   # where the runs execute

Where the runs execute is the launcher's business (launchers.py: in this process, local processes, a Slurm job
array); `--plan` prints a command per run for any other scheduler and `--collect` writes the report afterwards.

Every run uses the same `split_seed`, so all runs are scored on the same test images and paired tests
(McNemar) between them are valid; `seed` (initialisation, data order) varies over the seeds.
An interrupted study continues where it stopped: finished runs are kept, the unfinished one resumes.

One module per job: config (StudyConfig, the study file, each run's settings) · plan (the runs checked against the
folder, --plan's commands) · run (launch, then collect) · scoring (external sets, TTA, the ensemble) · results
(results.csv, summary.csv). Its command-line options live with the CLI (cli/study.py).
"""
