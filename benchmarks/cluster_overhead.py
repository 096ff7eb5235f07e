#!/usr/bin/env python
"""What running through a scheduler costs: the demo's sub-01 participant run (a new process and work dir
each time, start to report) with MultiProc on this machine vs Nipype's SLURM and SLURMGraph plugins on a
single-node SLURM started here (tests/slurm_cluster.py; needs root and Debian slurm-wlm + munge).
Medians of --repeats runs. Last line: one JSON object.

    python benchmarks/cluster_overhead.py [--repeats 3] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def main(argv=None) -> int:
    from slurm_cluster import Cluster, missing

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    why = missing()
    if why:
        print(f"cluster_overhead: {why}", file=sys.stderr)
        return 1
    bin_dir = Path(sys.executable).parent
    times: dict = {"MultiProc (--nprocs 2)": [], "SLURM": [], "SLURMGraph (submit to last job)": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cluster = Cluster(tmp / "slurm").start()
        env = {**os.environ, **cluster.env}
        try:
            subprocess.run([bin_dir / "dmrimc-bids-demo", tmp / "demo"], check=True, capture_output=True)
            base = [str(bin_dir / "dmrimc-bids"), str(tmp / "demo"), "", "participant", "--participant-label", "01",
                    "-w", ""]
            for k in range(args.repeats):
                for label, extra in (("MultiProc (--nprocs 2)", ["--nprocs", "2"]), ("SLURM", ["--plugin", "SLURM"]),
                                     ("SLURMGraph (submit to last job)", ["--plugin", "SLURMGraph"])):
                    cmd = list(base)
                    cmd[2], cmd[7] = str(tmp / f"out_{label[:5]}_{k}"), str(tmp / f"work_{label[:5]}_{k}")
                    t0 = time.perf_counter()
                    subprocess.run(cmd + extra, check=True, capture_output=True, env=env)
                    if label.startswith("SLURMGraph"):
                        cluster.wait_idle()
                    times[label].append(time.perf_counter() - t0)
                    assert (Path(cmd[2]) / "sub-01.html").is_file()
        finally:
            cluster.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = med["MultiProc (--nprocs 2)"]
    lines = ["| plugin | median wall time [s] | vs MultiProc | runs |", "|---|---|---|---|"]
    for k, v in med.items():
        lines.append(f"| {k} | {v:.1f} | {v / ref:.2f}x | {', '.join(f'{t:.1f}' for t in times[k])} |")
    text = "\n".join(lines)
    print(text)
    if args.record:
        from _record import machine, record
        record("cluster-overhead", text + f"\n\nDemo sub-01 (one session), single-node SLURM on this "
                                          f"machine ({machine()}). Command: `python benchmarks/cluster_overhead.py "
                                          f"--repeats {args.repeats} --record`.")
    print(json.dumps({"median_s": med, "runs_s": times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
