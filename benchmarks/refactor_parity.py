#!/usr/bin/env python
"""Before/after a refactor, on one machine in one sitting: the same benchmarks run on two source trees,
alternately, so that the machine's drift falls on both (issue #18: "no behaviour change beyond noise").

    git worktree add /tmp/before <commit>
    python benchmarks/refactor_parity.py --before /tmp/before [--rounds 2] [--record]

Each round runs, for the before tree and then this one (PYTHONPATH set to the tree): the Histo-μSim
leave-one-out fit (loo_histo.py: accuracy and voxels/s), the flow simulator against the published arrays
(spinflowsim_reference.py --rows-step 20: ms per realisation), the Monte Carlo walk (mc_throughput.py
--threads 2 --repeats 1) and the demo end to end (demo_participant.py --repeats 1: its recovery of every map
too). The leave-one-out and demo accuracies must be equal; times are reported as the runs of each tree.
--issue N names the recorded block refactor-parity-N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "reference"

#: (name, script arguments, figure extracted from the script's last JSON line)
BENCHMARKS = [
    ("LOO fit, voxels/s (median of 5)", ["loo_histo.py", "--data", str(SHARED / "histo_loo"), "--repeats", "5"],
     lambda r: r["voxels_per_s"]),
    ("flow, ms per richPGSE realisation", ["spinflowsim_reference.py", "--data", str(SHARED / "spinflowsim"),
                                           "--rows-step", "20", "--threads", "1"],
     lambda r: 1e3 * r["s_per_realisation_richPGSE"]),
    ("MC walk, walker-steps/s (2 threads)", ["mc_throughput.py", "--threads", "2", "--repeats", "1", "--svg",
                                             str(SHARED / "substrates" / "mouse_example" / "mouse_example_crop.svg")],
     lambda r: r["steps_per_s_cpu_2"]),
    ("demo, 3 series, s cold start to report", ["demo_participant.py", "--repeats", "1"],
     lambda r: r["wall_s_median"]),
]


def _run(tree: Path, args: list) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    res = subprocess.run([sys.executable, str(tree / "benchmarks" / args[0]), *args[1:]], cwd=tree, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _demo_changes(demo: dict) -> list:
    """Lines naming each demo recovery figure that differs, before -> after."""
    out = []

    def walk(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) & set(b)):
                walk(a[k], b[k], f"{path}/{k}" if path else str(k))
        elif a != b:
            out.append(f"- {path}: {a} -> {b}")
    walk(demo.get("before", {}), demo.get("after", {}), "")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="source tree of the commit before the change")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--issue", type=int, default=18, help="the refactor's issue (the block's name)")
    ap.add_argument("--only", nargs="+", default=None, metavar="WORD",
                    help="the benchmarks whose name starts with one of these words (e.g. demo), not all")
    args = ap.parse_args(argv)
    benchmarks = [b for b in BENCHMARKS if args.only is None or b[0].split(",")[0].split()[0] in args.only]
    trees = {"before": args.before.resolve(), "after": HERE.parent}
    runs = {name: {"before": [], "after": []} for name, _, _ in benchmarks}
    accuracy, demo = {}, {}
    for _ in range(args.rounds):
        for name, script, figure in benchmarks:
            for label, tree in trees.items():
                out = _run(tree, script)
                runs[name][label].append(round(float(figure(out)), 4 if figure(out) < 100 else 0))
                if "params" in out:  # LOO accuracy: the published 'vCS' and ours 'vCS_cyl' are one parameter
                    accuracy[label] = {k.replace("vCS_cyl", "vCS"): v for k, v in out["params"].items()}
                if "recovery" in out:  # the demo's recovery of every map, per series
                    demo[label] = {"recovery": out["recovery"], "pooled": out["pooled"]}
                print(f"{name} [{label}]: {runs[name][label][-1]}", file=sys.stderr)
    same = accuracy.get("before") == accuracy.get("after")
    same_demo = demo.get("before") == demo.get("after")
    only = f" --only {' '.join(args.only)}" if args.only else ""
    lines = [f"`python benchmarks/refactor_parity.py --before <tree of the commit before issue #{args.issue}> --rounds "
             f"{args.rounds} --issue {args.issue}{only} --record` (x86_64, {os.cpu_count()} cpus; the two trees run "
             "alternately)", "",
             "| benchmark | before (runs) | after (runs) |", "|---|---|---|"]
    for name in runs:
        lines.append(f"| {name} | {runs[name]['before']} | {runs[name]['after']} |")
    lines.append("")
    if accuracy:
        lines.append(f"Leave-one-out accuracy (ρ, MedAE, bias of every parameter) identical before and after: **{same}**.")
    if demo:
        lines.append(f"Demo recovery (every map's MedAE, bias and ρ per series, pooled tissue ρ) identical: **{same_demo}**.")
        if not same_demo:
            lines += _demo_changes(demo)
    print("\n".join(lines))
    if args.record:
        from _record import record
        record(f"refactor-parity-{args.issue}", "\n".join(lines))
    return 0 if (same or not accuracy) and (same_demo or not demo) else 1


if __name__ == "__main__":
    sys.exit(main())
