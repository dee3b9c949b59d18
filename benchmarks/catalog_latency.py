#!/usr/bin/env python
"""Does the catalogue's latency rank models as their FLOPs do? A check of `transferlab models --measure`.

    python benchmarks/catalog_latency.py                       # on a quiet machine: exit 0 when every family agrees
    python benchmarks/catalog_latency.py --background-load 2   # the same with 2 CPU-bound processes beside it

Within a family of the same architecture (resnet18 < 34 < 50, efficientnet_lite0 < 1 < 2, mobilenet_v3_small <
large) more multiply-adds take longer, so the measured batch-1 latency (the fastest call, interleaved rounds; see
transferlab/model_catalog/timing.py) must rank each family as the FLOPs do. Prints the table, the other
processes' CPU use while measuring and one line per family, then
    SUMMARY families=<n> agree=<k> busy=<True|False> other_load_cpus=<x>
Exit code: 0 every family agrees; 1 a family disagrees on a quiet machine (a measurement problem); 3 the machine
was busy (other processes used more than machine.BUSY_SHARE of the CPUs): the ranking is printed but not judged.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import background_load  # noqa: E402

from transferlab.model_catalog.build import catalog  # noqa: E402
from transferlab.model_catalog.output import format_table  # noqa: E402

FAMILIES = {"resnet": ["resnet18", "resnet34", "resnet50"],
            "efficientnet_lite": ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"],
            "mobilenet_v3": ["mobilenet_v3_small", "mobilenet_v3_large"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma list of " + ", ".join(FAMILIES))
    parser.add_argument("--repeats", type=int, default=30, help="interleaved rounds of batch-1 calls")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own count)")
    parser.add_argument("--background-load", type=int, default=0, help="CPU-bound processes running beside it")
    args = parser.parse_args(argv)
    families = {f: FAMILIES[f] for f in args.families.split(",")}
    names = [n for members in families.values() for n in members]
    with background_load(args.background_load):
        entries = catalog(names, measure=True, batch_size=1, repeats=args.repeats, warmup=3, budget_s=2.0,
                          threads=args.threads, progress=False)
    print(format_table(entries))
    by_name = {e.name: e for e in entries}
    agree = 0
    for family, members in families.items():
        flops = sorted(members, key=lambda n: by_name[n].gflops)
        latency = sorted(members, key=lambda n: by_name[n].latency_ms)
        ok = flops == latency
        agree += ok
        print(f"{family}: FLOPs order {' < '.join(flops)}; latency order {' < '.join(latency)} "
              f"({', '.join(f'{by_name[n].latency_ms:.1f}' for n in latency)} ms): {'agree' if ok else 'DISAGREE'}")
    busy, load = entries[0].busy, entries[0].other_load_cpus
    print(f"SUMMARY families={len(families)} agree={agree} busy={busy} other_load_cpus={load:.2f}")
    if busy:
        return 3
    return 0 if agree == len(families) else 1


if __name__ == "__main__":
    sys.exit(main())
