"""Compare the fitted maps of two dmrimc-bids output folders (used by check-image.sh and check-apptainer.sh).

    python3 containers/compare-maps.py OUT_A OUT_B [--label NAME] [--tolerance 1e-6]

Exits 0 when both hold the same *_dwimap.nii.gz files, NaN in the same voxels and every fitted voxel within
the tolerance; prints the number of maps and the largest difference."""

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def largest_difference(a: Path, b: Path) -> tuple[int, float]:
    """(number of maps, largest absolute difference over the fitted voxels); AssertionError on other maps."""
    maps = sorted(p.relative_to(b) for p in b.rglob("*_dwimap.nii.gz"))
    other = sorted(p.relative_to(a) for p in a.rglob("*_dwimap.nii.gz"))
    assert maps and maps == other, f"different map sets: {len(other)} in {a}, {len(maps)} in {b}"
    worst = 0.0
    for rel in maps:
        x, y = nib.load(a / rel).get_fdata(), nib.load(b / rel).get_fdata()
        assert x.shape == y.shape, f"{rel}: shapes {x.shape} and {y.shape}"
        assert np.array_equal(np.isnan(x), np.isnan(y)), f"{rel}: NaN in different voxels"
        if np.isfinite(y).any():
            worst = max(worst, float(np.nanmax(np.abs(x - y))))
    return len(maps), worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_a", type=Path)
    parser.add_argument("out_b", type=Path)
    parser.add_argument("--label", default="compare-maps.py")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args(argv)
    try:
        n, worst = largest_difference(args.out_a, args.out_b)
    except AssertionError as exc:
        print(f"{args.label}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.label}: {n} maps, largest difference {worst:.2e} (fitted voxels)")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
