#!/usr/bin/env bash
# Regenerate the pictures (docs/usage.md) of the simulators from the demo dataset's protocol (about 1 min, 2 cores).
#   bash docs/images/make.sh            (with dmrimc-bids installed, e.g. .venv/bin on PATH)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dmrimc-bids-demo "$work/demo" >/dev/null
prot="$work/demo/sub-01/dwi/sub-01_dwi.json"
# a capillary network coloured by velocity and flow, and 300 of its spins over one PGSE
dmrimc-sim flow --protocol "$prot" --out "$work/flow.npz" --spins 2000 --plot --show-entry 0 \
    --video "$here/flow_spins.gif" --video-spins 300 --video-frames 48 --video-fps 12 --video-dpi 72
cp "$work/flow.png" "$here/network.png"
# walkers among the example cells, coloured by their phase; signal vs b of that dictionary entry
dmrimc-sim histo --svg "$here/../examples/cells.svg" --scale 1 --protocol "$prot" --d0in 1.2 --d0ex 2.4 \
    --kappa 20 --walkers 4000 --out "$work/histo.npz" --device cpu --plot \
    --video "$here/walkers.gif" --video-phase --video-walkers 200 --video-frames 40 --video-fps 12 --video-dpi 72
cp "$work/histo_signals.png" "$here/signals.png"
# the participant graph (joint and separate models), drawn without data; needs Graphviz's dot
python "$here/graphs.py"
