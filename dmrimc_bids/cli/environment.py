"""The process environment of a console run inside a container or on a shared machine, set before numba,
matplotlib or Nipype are imported: a numba cache that works from a read-only image and a matplotlib config
folder of this user's own (which container runs us: bids/provenance.container_type)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

def writable(folder) -> bool:
    """Whether this process can create a file in folder (which must exist)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def numba_cache(environ=None, is_writable=writable) -> str:
    """Make $NUMBA_CACHE_DIR usable; returns the one-line notice to print ("" when nothing changed). numba
    refuses a cache folder it cannot write, even to read the kernels compiled into it (a read-only image: a SIF,
    a read-only bind), and without one it compiles into ~/.cache/numba, which fails with --no-home. So a
    read-only NUMBA_CACHE_DIR is copied once into a private temporary folder (the image's compiled kernels
    come with it) and NUMBA_CACHE_DIR points there."""
    env = os.environ if environ is None else environ
    cache = env.get("NUMBA_CACHE_DIR")
    if not cache or not Path(cache).is_dir() or is_writable(cache):
        return ""
    private = Path(tempfile.gettempdir()) / f"dmrimc-numba-{os.getuid()}"
    try:
        if not private.is_dir():
            staging = Path(tempfile.mkdtemp(prefix=private.name + ".", dir=private.parent))
            shutil.copytree(cache, staging, dirs_exist_ok=True)
            try:
                os.replace(staging, private)
            except OSError:   # another run made it first
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        return f"the numba cache {cache} is read-only and no private copy could be made ({exc}): kernels compile in memory"
    env["NUMBA_CACHE_DIR"] = str(private)
    return f"the numba cache {cache} is read-only: using a private copy in {private} (its compiled kernels included)"


def matplotlib_config(environ=None, is_writable=writable) -> None:
    """MPLCONFIGDIR of this user's own: kept when writable, else ~/.config/matplotlib when that is, else a
    per-user folder in the temporary directory (a shared /tmp/matplotlib of another user, mode 755, made every
    other user's run warn and rebuild the font cache)."""
    env = os.environ if environ is None else environ
    given = env.get("MPLCONFIGDIR")
    if given and Path(given).is_dir() and is_writable(given):
        return
    home = Path(env.get("HOME", "")) if env.get("HOME") else None
    candidates = ([home / ".config" / "matplotlib"] if home else []) + \
        [Path(tempfile.gettempdir()) / f"matplotlib-{os.getuid()}"]
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if is_writable(folder):
            env["MPLCONFIGDIR"] = str(folder)
            return


def prepare(prog: str) -> None:
    """All of the above for a console run (before numba or matplotlib is imported)."""
    notice = numba_cache()
    if notice:
        print(f"{prog}: {notice}", file=sys.stderr)
    matplotlib_config()
