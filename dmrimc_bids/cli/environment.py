"""The process environment of a console run inside a container or on a shared machine, set before matplotlib
or Nipype are imported: a matplotlib config folder of this user's own, and the one line saying where numba's
kernels are cached when that is not where numba would look (core/jitcache.usable_cache, run when
dmrimc_bids.core is imported, before numba). Which container runs us: bids/provenance.container_type."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from ..core import jitcache
from ..core.jitcache import writable


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
        if is_writable(folder):
            env["MPLCONFIGDIR"] = str(folder)
            return


def prepare(prog: str) -> None:
    """For a console run (before matplotlib is imported): the numba cache notice, once, and matplotlib's folder."""
    if jitcache.CACHE_NOTICE:
        print(f"{prog}: {jitcache.CACHE_NOTICE}", file=sys.stderr)
        jitcache.CACHE_NOTICE = ""
    matplotlib_config()
