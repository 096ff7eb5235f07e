"""Progress of the fitting nodes: a tqdm bar on the terminal, or, when the run's nodes work in parallel
processes, a small progress file per node that the run's one display sums (workflows/runner.py), so that
parallel workers' bars never overwrite each other.

The run marks a parallel run by a folder PROGRESS_FOLDER in its work dir; a node finds it among the parents
of its working directory (Nipype runs every node inside the work dir)."""

from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

PROGRESS_FOLDER = ".dmrimc_progress"
#: Seconds between a node's progress-file writes.
WRITE_EVERY_S = 0.5


def progress_folder(start=None) -> Path | None:
    """The run's progress folder among the parents of ``start`` (the working directory), or None."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / PROGRESS_FOLDER
        if candidate.is_dir():
            return candidate
    return None


@contextmanager
def progress(total: int, desc: str, unit: str = "vox"):
    """Yields update(n): a tqdm bar of its own, or the node's progress file in the run's progress folder."""
    folder = progress_folder()
    if folder is None:
        from tqdm import tqdm
        with tqdm(total=total, desc=desc, unit=unit, mininterval=2) as bar:
            yield bar.update
        return
    path = folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    state = {"desc": desc, "unit": unit, "total": int(total), "n": 0, "done": False}
    last = [0.0]

    def write():
        tmp = path.with_name("." + path.name)
        try:
            tmp.write_text(json.dumps(state))
            tmp.replace(path)
        except OSError:   # the run ended and removed its folder: progress is not worth an error
            pass

    def update(n: int = 1):
        state["n"] += int(n)
        if time.monotonic() - last[0] >= WRITE_EVERY_S:
            last[0] = time.monotonic()
            write()
    write()
    try:
        yield update
    finally:
        state["done"] = True
        write()


def read_progress(folder: Path) -> list[dict]:
    """Every node's progress state in the folder (unreadable or half-written files skipped)."""
    out = []
    for f in sorted(Path(folder).glob("[!.]*.json")):
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    return out
