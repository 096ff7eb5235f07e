#!/usr/bin/env python
"""Draw the participant graph the app builds, without data (participant.init_example_wf), for the README and docs/models.md:
docs/images/graph_joint.png (--model joint, the default) and graph_separate.png (--model separate), each with
the vascular branch. Needs Graphviz's ``dot`` (Debian: apt-get install graphviz).

    python docs/images/graphs.py            (also run by docs/images/make.sh)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    from dmrimc_bids.workflows.config import Config
    from dmrimc_bids.workflows.participant import init_example_wf

    if shutil.which("dot") is None:
        print("graphs.py: Graphviz's dot is not installed (apt-get install graphviz)", file=sys.stderr)
        return 69
    with tempfile.TemporaryDirectory() as tmp:
        for model in ("joint", "separate"):
            wf = init_example_wf(Config(out_dir=str(Path(tmp) / "out")), Path(tmp) / "work", model)
            png = wf.write_graph(dotfilename=str(Path(tmp) / f"graph_{model}.dot"), graph2use="colored", format="png")
            shutil.copyfile(png, HERE / f"graph_{model}.png")
            print(f"wrote {HERE / f'graph_{model}.png'} ({len(wf.list_node_names())} nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
