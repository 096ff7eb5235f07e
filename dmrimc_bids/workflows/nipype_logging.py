"""Where Nipype's messages go: its node messages (INFO) to a log file under the output folder's logs/, the
terminal only with ``-v``; warnings and errors always to the terminal.

MultiProc runs nodes in forkserver workers that import Nipype afresh; they preload
``dmrimc_bids.workflows.worker_preload``, whose import applies the routing recorded in the environment
(``DMRIMC_NIPYPE_LOG``). Importing this module changes nothing.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os

ENV = "DMRIMC_NIPYPE_LOG"
#: The module MultiProc's forkserver workers import first (its import applies the routing).
PRELOAD = "dmrimc_bids.workflows.worker_preload"
_NAMES = ("nipype.workflow", "nipype.interface", "nipype.utils", "nipype.filemanip")


def route(verbose: int, log_file=None) -> None:
    """Route Nipype's logging in this process and in the MultiProc workers started after this call."""
    os.environ[ENV] = json.dumps({"verbose": int(verbose), "log_file": str(log_file or "")})
    apply()
    try:
        multiprocessing.get_context("forkserver").set_forkserver_preload([PRELOAD])
    except (ValueError, AttributeError):  # no forkserver on this platform
        pass


def apply() -> None:
    """Apply the routing recorded in the environment (no-op without it)."""
    settings = json.loads(os.environ.get(ENV) or "{}")
    if not settings:
        return
    from nipype import logging as nipype_loggers  # creates Nipype's loggers and terminal handler
    verbose = settings.get("verbose", 0)
    del nipype_loggers
    for name in _NAMES:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    root = logging.getLogger("nipype")
    root.propagate = False  # Nipype's own handlers only: the app's terminal handler must not repeat its INFO
    for h in root.handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.NOTSET if verbose else logging.WARNING)
    log_file = settings.get("log_file")
    for h in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        if h.baseFilename != os.path.abspath(log_file or ""):
            root.removeHandler(h)
            h.close()
    if log_file and not any(isinstance(h, logging.FileHandler) for h in root.handlers):
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        fh = logging.FileHandler(log_file, delay=True)
        fh.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        root.addHandler(fh)
