"""numba's on-disk cache: one numba can write (set up when dmrimc_bids.core is imported, before any kernel is
decorated), and whether it holds compiled kernels (so a first run can say it compiles)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

#: The one line saying where the kernels are cached when that is not where numba would look ("" otherwise);
#: set by usable_cache() at import, printed by the command lines (cli/environment.py).
CACHE_NOTICE = ""


def writable(folder) -> bool:
    """Whether this process can create a file in folder, making it first when it is missing."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _private_folder() -> Path:
    return Path(tempfile.gettempdir()) / f"dmrimc-numba-{os.getuid()}"


def usable_cache(environ=None, is_writable=writable, kernel_folder=None) -> str:
    """Point $NUMBA_CACHE_DIR at a folder numba can write; returns the one-line notice ("" when nothing changed).
    numba refuses a cache it cannot write, even to read the kernels compiled into it, and when none of its
    places is writable (a read-only NUMBA_CACHE_DIR, the installed package, no home: a SIF run with --no-home)
    the first ``@njit(cache=True)`` raises at import. So:
    - a read-only NUMBA_CACHE_DIR (a SIF, a read-only bind) is copied once into a private temporary folder, its
      compiled kernels with it, and NUMBA_CACHE_DIR points there;
    - with none given, where neither the package's __pycache__ nor the user-wide ~/.cache/numba is writable,
      NUMBA_CACHE_DIR becomes an empty private temporary folder (the kernels compile into it once).
    Must run before numba is imported (numba reads its configuration then)."""
    env = os.environ if environ is None else environ
    cache = env.get("NUMBA_CACHE_DIR")
    private = _private_folder()
    if cache:
        if not os.path.isdir(cache) or is_writable(cache):
            return ""
        try:
            if not private.is_dir():
                staging = Path(tempfile.mkdtemp(prefix=private.name + ".", dir=private.parent))
                shutil.copytree(cache, staging, dirs_exist_ok=True)
                try:
                    os.replace(staging, private)
                except OSError:   # another run made it first
                    shutil.rmtree(staging, ignore_errors=True)
        except OSError as exc:
            return f"the numba cache {cache} is read-only and no private copy could be made ({exc})"
        env["NUMBA_CACHE_DIR"] = str(private)
        return f"the numba cache {cache} is read-only: using a private copy in {private} (its compiled kernels included)"
    in_tree = Path(kernel_folder or Path(__file__).parent / "fitting") / "__pycache__"
    user_root = env.get("XDG_CACHE_HOME") or (str(Path(env["HOME"]) / ".cache") if env.get("HOME") else "")
    if is_writable(in_tree) or (user_root and is_writable(Path(user_root) / "numba")):
        return ""
    if not is_writable(private):
        return f"no writable numba cache (the package's folder, {user_root or 'no HOME'}, {private}): kernels cannot be cached"
    env["NUMBA_CACHE_DIR"] = str(private)
    return (f"no writable numba cache (the package's folder and {user_root or 'HOME'} are read-only): "
            f"the kernels compile into {private}")


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


def set_up() -> None:
    """usable_cache() for this process; numba, if already imported, is told too."""
    global CACHE_NOTICE
    CACHE_NOTICE = usable_cache()
    config = sys.modules.get("numba.core.config")
    if CACHE_NOTICE and config is not None and os.environ.get("NUMBA_CACHE_DIR"):
        config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]
