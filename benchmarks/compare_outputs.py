"""Compare two output folders of the app, file by file: NIfTI voxel data and headers (gzip timestamps
aside), JSON field by field, other files byte by byte. Prints one line per difference.

    python benchmarks/compare_outputs.py BEFORE AFTER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def _json_diff(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a:
                yield f"{path}/{k}: added"
            elif k not in b:
                yield f"{path}/{k}: removed"
            else:
                yield from _json_diff(a[k], b[k], f"{path}/{k}")
    elif a != b:
        yield f"{path}: {json.dumps(a)[:160]} -> {json.dumps(b)[:160]}"


def compare(before: Path, after: Path) -> list[str]:
    out = []
    files_a = {p.relative_to(before) for p in before.rglob("*") if p.is_file()}
    files_b = {p.relative_to(after) for p in after.rglob("*") if p.is_file()}
    skip = lambda r: r.parts[0] == "logs" and r.suffix in (".tsv", ".json")  # noqa: E731 - run-stamped names
    for r in sorted(files_a - files_b):
        if not skip(r):
            out.append(f"{r}: only before")
    for r in sorted(files_b - files_a):
        if not skip(r):
            out.append(f"{r}: only after")
    for r in sorted(files_a & files_b):
        a, b = before / r, after / r
        if r.name.endswith((".nii", ".nii.gz")):
            ia, ib = nib.load(a), nib.load(b)
            da, db = np.asanyarray(ia.dataobj), np.asanyarray(ib.dataobj)
            if da.dtype != db.dtype or da.shape != db.shape or not np.array_equal(da, db, equal_nan=True):
                out.append(f"{r}: voxel data differ")
            if ia.header.binaryblock != ib.header.binaryblock:
                out.append(f"{r}: header differs")
        elif r.suffix == ".json":
            out += [f"{r}{d}" for d in _json_diff(json.loads(a.read_text()), json.loads(b.read_text()))]
        elif a.read_bytes() != b.read_bytes():
            out.append(f"{r}: bytes differ")
    return out


if __name__ == "__main__":
    diffs = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n".join(diffs) if diffs else "identical")
    sys.exit(0)
