"""`dmrimc-bids-dictionary`: build dictionaries the app reads (.npz + .json).

    dmrimc-bids-dictionary import-histousim OUT --bval ref.bval --gdur ref.gdur --gsep ref.gsep \
        --signals s1.npy s2.npy --params p1.npy p2.npy [--names fin mCS ...]
    dmrimc-bids-dictionary default OUT      # a copy of the embedded (Monte Carlo) default, for inspection
    dmrimc-bids-dictionary analytic OUT     # the analytic test dictionary (restricted-cylinder signals)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import add_version
from ..core.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dmrimc-bids-dictionary", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(ap, "dmrimc-bids-dictionary")
    sub = ap.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import-histousim", help="import the published Histo-uSim arrays")
    imp.add_argument("out", type=Path, help="output stem (writes OUT.npz and OUT.json)")
    imp.add_argument("--bval", required=True, type=Path, help="reference protocol b-values [s/mm²]")
    imp.add_argument("--gdur", required=True, type=Path, help="reference protocol δ [ms]")
    imp.add_argument("--gsep", required=True, type=Path, help="reference protocol Δ [ms]")
    imp.add_argument("--signals", required=True, nargs="+", type=Path, help="SIGNALS .npy file(s)")
    imp.add_argument("--params", required=True, nargs="+", type=Path, help="PARAMETERS .npy file(s), same order")
    imp.add_argument("--names", nargs="+", help="parameter column names (default: the published order)")
    dflt = sub.add_parser("default", help="write a copy of the embedded default dictionary (Monte Carlo)")
    dflt.add_argument("out", type=Path, help="output stem (writes OUT.npz and OUT.json)")
    ana = sub.add_parser("analytic", help="write the analytic dictionary the tests use (not the app's default)")
    ana.add_argument("out", type=Path, help="output stem (writes OUT.npz and OUT.json)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "import-histousim":
            from ..core.dictionary import import_histousim
            d = import_histousim(args.bval, args.gdur, args.gsep, args.signals, args.params, args.names)
        elif args.cmd == "default":
            from ..core.dictionary_default import default_dictionary
            d = default_dictionary()
        else:
            from ..core.analytic import analytic_dictionary
            d = analytic_dictionary()
        path = d.save(args.out)
    except InputError as exc:
        print(f"dmrimc-bids-dictionary: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{len(d)} entries x {len(d.protocol)} measurements, parameters {', '.join(d.names)} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
