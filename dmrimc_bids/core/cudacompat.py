"""Import numba.cuda without changing NumPy for the rest of the process.

numba-cuda's typing registry names ``np.row_stack``, which NumPy >= 2.5 removed. While numba.cuda and
the modules it would import at the first compilation (LAZY_MODULES) are imported, ``np.row_stack`` is
lent as ``np.vstack``; it is taken back afterwards, so no other code sees a NumPy that differs from the
installed one (found on the H100 with NumPy 2.5.2 and numba-cuda: the lazy import failed at compile time).
"""

from __future__ import annotations

import importlib

import numpy as np


#: numba-cuda modules that read np.row_stack when they are first imported.
LAZY_MODULES = ("numba.cuda.np.arrayobj", "numba.cuda.np.npyimpl")


def import_numba_cuda():
    """The numba.cuda module (ImportError when numba has no CUDA support)."""
    lent = not hasattr(np, "row_stack")
    if lent:
        np.row_stack = np.vstack
    try:
        cuda = importlib.import_module("numba.cuda")
        for name in LAZY_MODULES:  # numba-cuda imports these at the first compilation, not at import
            try:
                importlib.import_module(name)
            except ImportError:  # numba's own (older) CUDA target has no such module
                pass
        return cuda
    finally:
        if lent:
            del np.row_stack


def cuda_unavailable_errors() -> tuple:
    """The exception types that mean "no usable CUDA device, driver or toolchain here" (numba-cuda's support,
    driver, API, NVVM/NVRTC and linker errors, and ImportError): the only ones a ``device='auto'`` GPU path
    answers by running on the CPU. Any other exception is a bug of the GPU path and is raised."""
    kinds = [ImportError]
    try:
        from numba.cuda.cudadrv import driver, error
    except ImportError:
        return tuple(kinds)
    for module, names in ((error, ("CudaSupportError", "CudaDriverError", "CudaRuntimeError", "NvvmError",
                                   "NvvmSupportError", "NvrtcError", "NvrtcSupportError")),
                          (driver, ("CudaAPIError", "LinkerError"))):
        kinds += [getattr(module, n) for n in names if isinstance(getattr(module, n, None), type)]
    return tuple(kinds)


def warn_cpu_fallback(what: str, exc: BaseException) -> None:
    """The one warning line of a ``device='auto'`` GPU path that failed and was redone on the CPU."""
    import logging
    logging.getLogger("dmrimc_bids").warning(
        "warning: --device auto: the GPU %s failed (%s: %s); running it on the CPU instead", what,
        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
