"""Figures of the HTML reports (matplotlib, Agg), returned as base64 PNG data URIs so that every report
is one self-contained file."""

from __future__ import annotations

import base64
import io

import numpy as np

DPI = 90


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def to_data_uri(fig) -> str:
    """PNG data URI of a matplotlib figure (the figure is closed)."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def mosaic_slices(mask: np.ndarray, n: int = 6) -> list[int]:
    """Up to n axial slice indices evenly spread over the slices the mask touches (all slices if empty)."""
    z = np.flatnonzero(mask.reshape(-1, mask.shape[2]).any(0)) if mask.any() else np.arange(mask.shape[2])
    if z.size <= n:
        return [int(v) for v in z]
    return [int(z[round(i)]) for i in np.linspace(0, z.size - 1, n)]


def robust_range(values: np.ndarray, lo_pct=2.0, hi_pct=98.0) -> tuple[float, float]:
    """Percentile display range of the finite values (a unit span around a constant)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 0.0, 1.0
    a, b = np.percentile(v, [lo_pct, hi_pct])
    if not b > a:
        a, b = a - 0.5, b + 0.5
    return float(a), float(b)


def map_mosaic(volume: np.ndarray, underlay: np.ndarray, mask: np.ndarray, title: str, unit: str,
               cmap: str = "viridis", discrete: bool = False, slices=None) -> str:
    """Axial slices of a map over the b=0 image (map shown inside the mask, mask outlined in white),
    with a colour bar in the map's unit and a histogram of the map inside the mask."""
    plt = _plt()
    slices = mosaic_slices(mask) if slices is None else slices
    inside = volume[mask & np.isfinite(volume)]
    vmin, vmax = (float(np.nanmin(inside)) - 0.5, float(np.nanmax(inside)) + 0.5) if discrete and inside.size \
        else robust_range(inside)
    fig, axes = plt.subplots(1, len(slices) + 1, figsize=(1.7 * len(slices) + 2.6, 2.0),
                             gridspec_kw={"width_ratios": [1] * len(slices) + [1.6]})
    u_lo, u_hi = robust_range(underlay[np.isfinite(underlay)], 1, 99)
    im = None
    for ax, k in zip(axes[:-1], slices):
        ax.imshow(underlay[:, :, k].T, origin="lower", cmap="gray", vmin=u_lo, vmax=u_hi, interpolation="nearest")
        layer = np.ma.masked_where(~(mask[:, :, k] & np.isfinite(volume[:, :, k])), volume[:, :, k])
        im = ax.imshow(layer.T, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        if mask[:, :, k].any() and not mask[:, :, k].all():
            ax.contour(mask[:, :, k].T.astype(float), levels=[0.5], colors="w", linewidths=0.8)
        ax.set_title(f"z={k}", fontsize=7)
        ax.set_axis_off()
    if im is not None:
        cb = fig.colorbar(im, ax=list(axes[:-1]), fraction=0.025, pad=0.01)
        cb.set_label(unit or "unitless", fontsize=7)
        cb.ax.tick_params(labelsize=6)
    hax = axes[-1]
    if inside.size:
        hax.hist(inside, bins=30, color="#4a6fa5", range=(vmin, vmax))
    hax.set_xlabel(f"{title} [{unit}]" if unit else title, fontsize=7)
    hax.set_ylabel("voxels", fontsize=7)
    hax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9, x=0.02, ha="left")
    return to_data_uri(fig)


def signal_panel(examples: list[dict], x: np.ndarray, xlabel: str, groups: np.ndarray | None = None,
                 group_labels: list[str] | None = None, title: str = "") -> str:
    """Measured (markers) and fitted (lines) normalised signal of a few voxels vs x (usually b),
    one line style per group (e.g. diffusion time)."""
    plt = _plt()
    n = max(len(examples), 1)
    fig, axes = plt.subplots(1, n, figsize=(2.7 * n, 2.3), squeeze=False)
    groups = np.zeros(len(x), int) if groups is None else np.asarray(groups)
    colours = plt.get_cmap("tab10")
    for ax, ex in zip(axes[0], examples):
        meas, fit = np.asarray(ex["measured"], float), np.asarray(ex["fitted"], float)
        for g in np.unique(groups):
            sel = np.flatnonzero(groups == g)
            sel = sel[np.argsort(x[sel])]
            label = group_labels[g] if group_labels else None
            ax.plot(x[sel], meas[sel], "o", ms=3, color=colours(g % 10), label=label)
            ax.plot(x[sel], fit[sel], "-", lw=1, color=colours(g % 10))
        ax.set_title(ex.get("title", ""), fontsize=7)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel("S / S0", fontsize=7)
        ax.tick_params(labelsize=6)
    if group_labels:
        axes[0][0].legend(fontsize=6, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9, x=0.02, ha="left")
    fig.tight_layout()
    return to_data_uri(fig)


def distributions(values: dict, unit: str, title: str, flagged: set | None = None) -> str:
    """Strip plot with a box per group: values {group label: [(subject label, value), ...]}; points of
    flagged subject labels are drawn as red crosses."""
    plt = _plt()
    flagged = flagged or set()
    labels = list(values)
    fig, ax = plt.subplots(figsize=(max(2.5, 1.1 * len(labels) + 1), 2.4))
    data = [[v for _, v in values[k] if np.isfinite(v)] for k in labels]
    if any(data):
        ax.boxplot([d if d else [np.nan] for d in data], widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)
    for i, k in enumerate(labels, start=1):
        for name, v in values[k]:
            if not np.isfinite(v):
                continue
            x = i + rng.uniform(-0.12, 0.12)
            if name in flagged:
                ax.plot(x, v, "x", color="#c0392b", ms=6)
            else:
                ax.plot(x, v, "o", color="#4a6fa5", ms=3, alpha=0.8)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel(unit or "unitless", fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)
    fig.tight_layout()
    return to_data_uri(fig)


def correlation_matrix(rho: np.ndarray, names: list[str], title: str) -> str:
    """Heat map of a correlation matrix with the coefficients written in the cells."""
    plt = _plt()
    k = len(names)
    fig, ax = plt.subplots(figsize=(0.55 * k + 1.8, 0.55 * k + 1.2))
    im = ax.imshow(rho, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    for i in range(k):
        for j in range(k):
            if np.isfinite(rho[i, j]):
                ax.text(j, i, f"{rho[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="w" if abs(rho[i, j]) > 0.6 else "k")
    fig.colorbar(im, ax=ax, fraction=0.04, label="Spearman ρ")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return to_data_uri(fig)
