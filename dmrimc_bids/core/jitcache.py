"""Whether numba's on-disk cache holds compiled kernels (so a first run can say it compiles)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def compiled(module_file) -> bool:
    """True when numba's cache has index files (``<module>.<function>-<line>.pyXY.nbi``) for some kernel of
    ``module_file``: beside it in __pycache__, or under $NUMBA_CACHE_DIR."""
    return bool(_index_files(module_file, "*"))


def _index_files(module_file, function: str) -> list:
    """numba's index files of ``function`` (a glob) of ``module_file``, wherever numba keeps them: beside the
    module in __pycache__, under $NUMBA_CACHE_DIR, or, when the module's folder is read-only (an installed
    image), in the user-wide cache (~/.cache/numba/<folder>_<sha1 of its path>, numba's UserWideCacheLocator)."""
    path = Path(module_file)
    pattern = f"{path.stem}.{function}.nbi"
    found = list((path.parent / "__pycache__").glob(pattern))
    cache_dir = os.environ.get("NUMBA_CACHE_DIR")
    if cache_dir and Path(cache_dir).is_dir():
        found += list(Path(cache_dir).rglob(pattern))
    user = user_cache_folder(path)
    if user is not None and user.is_dir():
        found += list(user.glob(pattern))
    return found


def user_cache_folder(module_file) -> Path | None:
    """The folder of numba's user-wide cache for the kernels of module_file (None if numba has no such place)."""
    try:
        from numba.core.caching import UserWideCacheLocator
        from numba.misc.appdirs import AppDirs
    except ImportError:   # another numba layout: the other places are still searched
        return None
    root = AppDirs(appname="numba", appauthor=False).user_cache_dir
    return Path(root) / UserWideCacheLocator.get_suitable_cache_subpath(str(module_file))


def uncached(dispatchers) -> list[str]:
    """Names of the numba dispatchers (``@njit(cache=True)`` functions) that have no compiled version in
    numba's cache for this Python (index ``<module>.<qualname>-<first line>.pyXY.nbi``): their first call
    compiles."""
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    missing = []
    for d in dispatchers:
        func = getattr(d, "py_func", d)
        name = f"{func.__qualname__}-{func.__code__.co_firstlineno}.{py}"
        if not _index_files(func.__code__.co_filename, name):
            missing.append(func.__qualname__)
    return missing


def compile_notice(module_file, what: str, dispatchers=None) -> str:
    """The one line shown before the first use of uncached kernels ("" when they are cached): with
    ``dispatchers``, when any of them is uncached; otherwise when no kernel of ``module_file`` is."""
    if (not uncached(dispatchers)) if dispatchers is not None else compiled(module_file):
        return ""
    return (f"compiling the {what} kernels for this machine (first run only, about a minute; numba caches them, "
            "later runs start at once)")
