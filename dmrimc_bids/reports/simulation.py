"""Pictures of a simulation: the substrate(s) and example signals (``dmrimc-sim ... --plot``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def plot_histo(substrates: list, dictionary, out_png) -> Path:
    """PNG: each substrate's cells on its periodic tile, and signal vs b of a few entries per (δ, Δ)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(substrates)
    fig, axes = plt.subplots(1, n + 1, figsize=(4.2 * (n + 1), 4.0), squeeze=False)
    for ax, sub in zip(axes[0], substrates):
        for c in sub.cells:
            x, y = c.exterior.xy
            ax.fill(x, y, fc="#3a9d5d", ec="#1b4d2c", lw=0.4, alpha=0.8)
        lx, ly = sub.tile_um
        ax.plot([0, lx, lx, 0, 0], [0, 0, ly, ly, 0], "k--", lw=0.8)
        m = sub.metrics()
        ax.set_title(f"{sub.name}\n{sub.n_cells} cells, fin {m['fin']:.2f}, vCS_cyl {m['vCS_cyl']:.1f} µm",
                     fontsize=8)
        ax.set_aspect("equal")
        ax.set_xlabel("x [µm]")
        ax.set_ylabel("y [µm]")
    ax = axes[0][-1]
    prot = dictionary.protocol
    pairs = sorted({(s, b) for s, b in zip(prot.small_delta_ms, prot.big_delta_ms) if np.isfinite(s)})[:3]
    rows = np.linspace(0, len(dictionary) - 1, min(4, len(dictionary))).astype(int)
    names = dictionary.names
    for k, (sd, bd) in enumerate(pairs):
        sel = np.flatnonzero((prot.small_delta_ms == sd) & (prot.big_delta_ms == bd))
        sel = np.union1d(sel, np.flatnonzero(prot.b == 0)) if not np.any(prot.b[sel] == 0) else sel
        order = sel[np.argsort(prot.b[sel])]
        for j, r in enumerate(rows):
            lab = (f"δ/Δ {sd:g}/{bd:g} ms; " if j == 0 else "") + \
                  ", ".join(f"{nm} {dictionary.params[r, names.index(nm)]:.2g}" for nm in ("fin", "D0in", "kappa")
                            if nm in names)
            ax.plot(prot.b[order], dictionary.signals[r, order], ["-", "--", ":"][k % 3], marker=".",
                    color=f"C{j}", label=lab, lw=1)
    ax.set_xlabel("b [s/mm²]")
    ax.set_ylabel("signal / b0")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=6)
    ax.set_title("example signals (line style: timing)", fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png


def plot_flow(solution, dictionary, out_png) -> Path:
    """PNG: a resolved network with segments coloured by velocity [mm/s] (inlet/outlet marked), and the
    vascular signal vs b of a few dictionary entries."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    net = solution.network
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    xy = net.nodes[:, :2]
    v = solution.velocity_um_per_s * 1e-3
    lines = LineCollection(xy[net.segments], array=v, cmap="viridis",
                           linewidths=0.6 + 2.4 * net.radius_um / net.radius_um.max())
    ax.add_collection(lines)
    ax.plot(*xy[net.inlet], "r^", ms=9, label="inlet")
    ax.plot(*xy[net.outlet], "bs", ms=8, label="outlet")
    ax.autoscale()
    ax.set_aspect("equal")
    ax.set_xlabel("x [µm]")
    ax.set_ylabel("y [µm]")
    ax.legend(fontsize=7)
    fig.colorbar(lines, ax=ax, label="velocity [mm/s]")
    ax.set_title(f"{net.name}: Qin {net.qin_mm3_per_s:.2g} mm³/s" + ("" if net.is_planar else " (x-y projection)"),
                 fontsize=8)
    prot = dictionary.protocol
    rows = np.linspace(0, len(dictionary) - 1, min(5, len(dictionary))).astype(int)
    pairs = sorted({(s, b) for s, b in zip(prot.small_delta_ms, prot.big_delta_ms) if np.isfinite(s)})[:2]
    for k, (sd, bd) in enumerate(pairs):
        sel = np.flatnonzero(((prot.small_delta_ms == sd) & (prot.big_delta_ms == bd)) | (prot.b == 0))
        order = sel[np.argsort(prot.b[sel])]
        for j, r in enumerate(rows):
            vm = dictionary.params[r, dictionary.names.index("vm")] if "vm" in dictionary.names else np.nan
            ax2.plot(prot.b[order], dictionary.signals[r, order], ["-", "--"][k], marker=".", color=f"C{j}",
                     label=(f"vm {vm:.2g} mm/s" if k == 0 else None), lw=1)
    ax2.set_xlabel("b [s/mm²]")
    ax2.set_ylabel("vascular signal S_V / S_V(0)")
    ax2.set_ylim(0, 1.02)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
