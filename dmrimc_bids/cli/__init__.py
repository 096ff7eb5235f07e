"""The command lines: dmrimc-bids (run.py, parser.py), dmrimc-sim (sim.py), dmrimc-bids-demo (demo.py) and
dmrimc-bids-dictionary (dictionary.py)."""


def add_version(parser, prog: str) -> None:
    """``--version``: the program's name and the package version, exit 0."""
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
