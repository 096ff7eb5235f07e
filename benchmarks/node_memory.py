#!/usr/bin/env python
"""Declared vs measured memory of every node of the participant workflow (are the mem_gb honest?).

The demo's sub-01 is tiled into a larger image (--tile K M: K x K in-plane, M x through-plane), the
participant workflow runs once, then every node is run again from its pickle in a fresh Python process, as a
cluster job runs it, and that process's peak resident memory (VmHWM) is compared with the
node's declared mem_gb. Last line: one JSON object.

    python benchmarks/node_memory.py [--tile 3 5] [--record]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

# VmHWM, not getrusage: ru_maxrss survives exec and would count the parent's pages
RUN_NODE = """
import sys
from nipype.utils.filemanip import loadpkl
node = loadpkl(sys.argv[1])
node.overwrite = True
node.base_dir = sys.argv[2]
node.run()
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(int(hwm.split()[1]) * 1024 / 1e9, node.mem_gb, node.n_procs)
"""


def tile_dataset(demo: Path, dst: Path, k: int, m: int) -> tuple:
    """Copy the demo with sub-01 only and its images tiled (k, k, m) times; returns the DWI shape."""
    shutil.copytree(demo, dst, ignore=shutil.ignore_patterns("sub-02"))
    (dst / "participants.tsv").write_text("participant_id\nsub-01\n")
    shape = None
    for f in list(dst.rglob("sub-01*.nii.gz")):
        img = nib.load(f)
        data = np.asanyarray(img.dataobj)
        reps = (k, k, m) + (1,) * (data.ndim - 3)
        big = np.tile(data, reps)
        nib.save(nib.Nifti1Image(big, img.affine, img.header), f)
        if "_dwi" in f.name and "groundtruth" not in str(f):
            shape = big.shape
    return shape


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile", nargs=2, type=int, default=[3, 5], metavar=("K", "M"))
    ap.add_argument("--record", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args(argv)
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([bin_dir / "dmrimc-bids-demo", tmp / "demo"], check=True, capture_output=True)
        shape = tile_dataset(tmp / "demo", tmp / "bids", *args.tile)
        work = tmp / "work"
        subprocess.run([bin_dir / "dmrimc-bids", tmp / "bids", tmp / "out", "participant", "-w", work],
                       check=True, capture_output=True)
        rows = []
        for pkl in sorted(work.rglob("_node.pklz")):
            if "mapflow" in pkl.parts:
                continue
            rerun = tmp / "rerun" / pkl.parent.relative_to(work)
            res = subprocess.run([sys.executable, "-c", RUN_NODE, str(pkl), str(rerun)], capture_output=True,
                                 text=True)
            if res.returncode:
                print(res.stderr[-2000:], file=sys.stderr)
                return 1
            peak, declared, procs = (float(v) for v in res.stdout.split()[-3:])
            rows.append({"node": pkl.parent.name, "declared_gb": round(declared, 3), "peak_gb": round(peak, 3),
                         "n_procs": int(procs)})
    over = [r for r in rows if r["peak_gb"] > r["declared_gb"]]
    lines = [f"DWI {shape[0]}x{shape[1]}x{shape[2]} voxels x {shape[3]} volumes (demo sub-01 tiled "
             f"{args.tile[0]}x{args.tile[0]}x{args.tile[1]}); peak RSS of each node run alone in a new process "
             "(as a cluster job runs it).", "",
             "| node | declared mem_gb | measured peak [GB] | peak/declared |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['node']} | {r['declared_gb']:.2f} | {r['peak_gb']:.2f} | "
                     f"{r['peak_gb'] / r['declared_gb']:.2f} |")
    lines.append("")
    lines.append(f"Nodes above their declaration: {', '.join(r['node'] for r in over) or 'none'}.")
    text = "\n".join(lines)
    print(text)
    if args.record:
        sys.path.insert(0, str(Path(__file__).parent))
        from _record import machine, record
        record("node-memory", text + f"\n\nMachine: {machine()}. Command: `python benchmarks/node_memory.py "
                                     f"--tile {args.tile[0]} {args.tile[1]} --record`.")
    print(json.dumps({"shape": shape, "nodes": rows, "over": [r["node"] for r in over]}))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
