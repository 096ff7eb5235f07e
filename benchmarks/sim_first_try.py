"""How long a first `dmrimc-sim histo` takes on a small protocol (issue #19): the default preset (quick) and the
published grid (--preset histousim), end to end through the CLI (Nipype graph, assembly), kernels cached.

    python benchmarks/sim_first_try.py [--repeats 3] [--full]

The 6-row protocol (b 0/1000/2000 s/mm² at two diffusion times) on the SVG tile docs/examples/cells.svg
(100 µm wide). --full also times the histousim preset once (about 20x longer). Writes the block
sim_first_try of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = "b\tsmall_delta\tbig_delta\n0\t10\t25\n1000\t10\t25\n2000\t10\t25\n0\t15\t45\n1000\t15\t45\n2000\t15\t45\n"


def run(tmp: Path, preset: str) -> float:
    cmd = [sys.executable, "-m", "dmrimc_bids.cli.sim", "histo", "--svg", str(ROOT / "docs/examples/cells.svg"),
           "--width-um", "100", "--protocol", str(tmp / "p.tsv"), "--out", str(tmp / f"{preset}.npz"),
           "--preset", preset]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="also time --preset histousim once")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "p.tsv").write_text(PROTOCOL)
        run(tmp, "quick")  # warm-up: numba's cache
        quick = [run(tmp, "quick") for _ in range(args.repeats)]
        full = run(tmp, "histousim") if args.full else None
    sys.path.insert(0, str(Path(__file__).parent))
    from _record import machine, record
    rows = ["| preset | grid x walkers | wall time [s] |", "|---|---|---|",
            f"| quick (default) | 27 x 5000 | {', '.join(f'{t:.1f}' for t in quick)} (median "
            f"**{statistics.median(quick):.1f}**) |"]
    if full is not None:
        rows.append(f"| histousim | 225 x 20000 | {full:.1f} (one run; {full / statistics.median(quick):.0f}x the "
                    "quick preset) |")
    record("sim_first_try", "\n".join([
        "`dmrimc-sim histo` on a 6-row protocol (b 0/1000/2000 s/mm² at Δ 25 and 45 ms), the 100 µm SVG tile "
        "`docs/examples/cells.svg`, kernels already compiled (a first run adds their compilation once):", "",
        *rows, "", f"Machine: {machine()}. Command: `python benchmarks/sim_first_try.py"
        f"{' --full' if args.full else ''} --repeats {args.repeats}`."]))


if __name__ == "__main__":
    main()
