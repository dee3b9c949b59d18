"""The model catalogue (`transferlab models`, Task A): size, compute, ImageNet accuracy and, on request, measured
speed and memory of each model.

    build.py    catalog(): one CatalogEntry per model, static facts first, then (measure=True) the timings
    entries.py  CatalogEntry and the facts known without running a model (parameters, FLOPs on the meta device)
    timing.py   the measurements: latency, throughput, training steps and peak memory, in child processes
    choice.py   which models to consider: Pareto front, budgets, sorting, the recommendations
    output.py   catalog.csv / .json / .png and the table `transferlab models` prints
"""
