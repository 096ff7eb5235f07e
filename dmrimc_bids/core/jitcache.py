"""Whether numba's on-disk cache holds a module's compiled kernels (so a first run can say it compiles)."""

from __future__ import annotations

import os
from pathlib import Path


def compiled(module_file) -> bool:
    """True when numba's cache has index files (``<module>.<function>-<line>.pyXY.nbi``) for the kernels of
    ``module_file``: beside it in __pycache__, or under $NUMBA_CACHE_DIR."""
    path = Path(module_file)
    pattern = f"{path.stem}.*.nbi"
    if any((path.parent / "__pycache__").glob(pattern)):
        return True
    cache_dir = os.environ.get("NUMBA_CACHE_DIR")
    return bool(cache_dir) and any(Path(cache_dir).rglob(pattern))


def compile_notice(module_file, what: str) -> str:
    """The one line shown before the first use of uncached kernels ("" when they are cached)."""
    if compiled(module_file):
        return ""
    return (f"compiling the {what} kernels for this machine (first run only, about a minute; numba caches them, "
            "later runs start at once)")
