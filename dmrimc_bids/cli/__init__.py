"""The command lines: dmrimc-bids (run.py, parser.py), dmrimc-sim (sim.py), dmrimc-bids-demo (demo.py) and
dmrimc-bids-dictionary (dictionary.py)."""

import os


def quiet_environment(prog: str = "dmrimc-bids") -> None:
    """The environment of a console run, set by each main() before Nipype is imported: no network check for
    Nipype updates (offline clusters); after Ctrl-C, no warning from multiprocessing's resource tracker (a
    process of its own) about the semaphores of the workers it outlived, noise on the one line an interrupted
    run prints."""
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning:multiprocessing.resource_tracker")
    from .environment import prepare
    prepare(prog)   # a numba cache and a matplotlib folder that work in any container


def add_version(parser, prog: str) -> None:
    """``--version``: the program's name and the package version, exit 0."""
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
