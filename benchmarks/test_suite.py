"""The default test suite's wall time on a fresh clone (issue #40: at most 4 minutes on 2 cores).

    python benchmarks/test_suite.py [--repeats 2] [--record]

Clones the committed HEAD into a temporary folder, installs it as the README's test command does (a new venv,
``pip install '.[dev,spice]'``), then times ``python -m pytest -q`` (the default suite, slow tests left out)
``--repeats`` times: the first run compiles the numba kernels (nothing is cached in a fresh clone), later runs
find them cached. --record writes the block ``test-suite-default`` of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import machine, record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd, cwd) -> tuple[float, str]:
    """(seconds, last line of the output) of a command that must succeed."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"test_suite.py: {' '.join(map(str, cmd))} failed:\n{(res.stdout + res.stderr)[-3000:]}")
    return seconds, (res.stdout.strip().splitlines() or [""])[-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="suite runs (the first compiles the kernels)")
    parser.add_argument("--record", action="store_true", help="write the block into docs/benchmarks.md")
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="dmrimc-suite-") as tmp:
        Path(tmp).chmod(0o755)   # readable by other users, as a checkout is (a test imports the package as nobody)
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        install, _ = timed([sys.executable, "-m", "venv", ".venv"], clone)
        more, _ = timed([".venv/bin/pip", "install", "--quiet", ".[dev,spice]"], clone)
        runs, summary = [], ""
        for _ in range(args.repeats):
            seconds, summary = timed([".venv/bin/python", "-m", "pytest", "-q", "-p", "no:cacheprovider"], clone)
            runs.append(round(seconds, 1))
            print(f"test_suite.py: default suite {seconds:.1f} s ({summary})", flush=True)
    summary = re.sub(r"\s+in [\d.]+s.*$", "", summary)
    text = (f"`python benchmarks/test_suite.py --repeats {args.repeats} --record` ({machine()}; commit {commit}, "
            f"a fresh clone): install (venv + `pip install '.[dev,spice]'`) {install + more:.0f} s; the default "
            f"suite `python -m pytest` ({summary}): runs {runs} s, the first compiling the numba kernels, "
            f"the later ones with them cached. The slow tests (`-m slow`) run in CI.")
    print(text)
    if args.record:
        record("test-suite-default", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
