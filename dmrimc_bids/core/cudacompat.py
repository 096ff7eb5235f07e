"""Import numba.cuda without changing NumPy for the rest of the process.

numba-cuda's typing registry names ``np.row_stack``, which NumPy >= 2.5 removed. While numba.cuda is
imported (the registry reads the attribute once), ``np.row_stack`` is lent as ``np.vstack``; it is taken
back afterwards, so no other code sees a NumPy that differs from the installed one.
"""

from __future__ import annotations

import importlib

import numpy as np


def import_numba_cuda():
    """The numba.cuda module (ImportError when numba has no CUDA support)."""
    lent = not hasattr(np, "row_stack")
    if lent:
        np.row_stack = np.vstack
    try:
        return importlib.import_module("numba.cuda")
    finally:
        if lent:
            del np.row_stack


def warn_cpu_fallback(what: str, exc: BaseException) -> None:
    """The one warning line of a ``device='auto'`` GPU path that failed and was redone on the CPU."""
    import logging
    logging.getLogger("dmrimc_bids").warning(
        "warning: --device auto: the GPU %s failed (%s: %s); running it on the CPU instead", what,
        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
