"""Figures of the HTML reports (matplotlib, Agg), returned as base64 PNG data URIs so that every report
is one self-contained file."""

from __future__ import annotations

import base64
import io

import numpy as np

DPI = 90



#: BIDS unit strings (sidecars keep them) as people read them in the reports.
_UNIT_TEXT = (("um^2", "µm²"), ("mm^2", "mm²"), ("mm^3", "mm³"), ("um^3", "µm³"), ("um", "µm"))


def display_unit(unit: str) -> str:
    """'um^2/ms' -> 'µm²/ms', 'um' -> 'µm' (the sidecars keep BIDS' strings)."""
    text = unit or ""
    for bids, shown in _UNIT_TEXT:
        text = text.replace(bids, shown)
    return text

def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    plt.rcParams["axes.formatter.useoffset"] = False   # a near-constant S0 reads 0.9977, not 1e-5+9.977e-1
    return plt


def to_data_uri(fig, tight: bool = True) -> str:
    """PNG data URI of a matplotlib figure (the figure is closed); tight=False keeps the figure's own
    layout (one draw instead of two)."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
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


def _outline(mask2d: np.ndarray) -> np.ndarray:
    """Pixels just outside a 2D mask (outside it, with a 4-neighbour inside), so the map stays visible."""
    m = np.pad(mask2d, 1)
    grown = m[1:-1, 1:-1] | m[:-2, 1:-1] | m[2:, 1:-1] | m[1:-1, :-2] | m[1:-1, 2:]
    return grown & ~mask2d


def slice_montage(volume, underlay, mask, slices, cmap, vmin, vmax) -> np.ndarray:
    """RGB montage [rows, cols, 3] of axial slices side by side (1-pixel gaps): the map inside the mask
    over the grey underlay, the mask's boundary in white. Rows run anterior-up (image y flipped)."""
    plt = pyplot()
    cm = plt.get_cmap(cmap) if isinstance(cmap, str) else cmap
    u_lo, u_hi = robust_range(underlay[np.isfinite(underlay)], 1, 99)
    tiles = []
    for k in slices:
        u = np.clip((np.nan_to_num(underlay[:, :, k]) - u_lo) / (u_hi - u_lo), 0, 1)
        rgb = np.repeat(u[..., None], 3, axis=2)
        v = volume[:, :, k]
        show = mask[:, :, k] & np.isfinite(v)
        if show.any():
            rgb[show] = cm(np.clip((v[show] - vmin) / (vmax - vmin), 0, 1))[:, :3]
        if mask[:, :, k].any() and not mask[:, :, k].all():
            rgb[_outline(mask[:, :, k])] = 1.0
        tiles.append(np.transpose(rgb, (1, 0, 2))[::-1])
        tiles.append(np.ones((tiles[-1].shape[0], 1, 3)))
    return np.concatenate(tiles[:-1], axis=1) if tiles else np.ones((1, 1, 3))


def map_mosaic(volume: np.ndarray, underlay: np.ndarray, mask: np.ndarray, title: str, unit: str,
               cmap: str = "viridis", discrete: bool = False, slices=None) -> str:
    """Axial slices of a map over the b=0 image (map shown inside the mask, mask outlined in white),
    with a colour bar in the map's unit and a histogram of the map inside the mask."""
    import matplotlib as mpl
    plt = pyplot()
    slices = mosaic_slices(mask) if slices is None else slices
    inside = volume[mask & np.isfinite(volume)]
    if discrete:  # fit exit codes: -1 failed (red), 0 background (grey), 1 fitted (green), 2 not fitted (blue)
        cmap, (vmin, vmax) = mpl.colors.ListedColormap(["#c0392b", "#7f8c8d", "#27ae60", "#2e86c1"]), (-1.5, 2.5)
    else:
        vmin, vmax = robust_range(inside)
    montage = slice_montage(volume, underlay, mask, slices, cmap, vmin, vmax)
    h, w = montage.shape[:2]
    img_w = 1.5 * len(slices)
    fig = plt.figure(figsize=(img_w + 3.2, 1.9))
    fw = img_w + 3.2
    ax = fig.add_axes((0.1 / fw, 0.08, img_w / fw, 0.78))
    ax.imshow(montage, interpolation="nearest", aspect="equal")
    ax.set_axis_off()
    for n, k in enumerate(slices):
        ax.text((n + 0.5) * (w + 1) / len(slices), -1, f"z={k}", ha="center", va="bottom", fontsize=7)
    cax = fig.add_axes(((img_w + 0.2) / fw, 0.12, 0.08 / fw, 0.7))
    cb = fig.colorbar(mpl.cm.ScalarMappable(mpl.colors.Normalize(vmin, vmax), cmap), cax=cax)
    cb.set_label(display_unit(unit) or "unitless", fontsize=7)
    cb.ax.tick_params(labelsize=6)
    if discrete:
        cb.set_ticks([-1, 0, 1])
    hax = fig.add_axes(((img_w + 1.4) / fw, 0.25, 1.7 / fw, 0.6))
    if inside.size:   # in float64: a float32 map of near-constant values (a probability of 1 - 1e-8) has too
        # few distinct floats between vmin and vmax for 30 bins
        hax.hist(np.asarray(inside, np.float64), bins=3 if discrete else 30, color="#4a6fa5",
                 range=(float(vmin), float(vmax) if vmax > vmin else float(vmin) + 1.0))
    hax.set_xlabel(f"{title} [{display_unit(unit)}]" if unit else title, fontsize=7)
    hax.set_ylabel("voxels", fontsize=7)
    hax.tick_params(labelsize=6)
    fig.text(0.1 / fw, 0.97, title, fontsize=9, va="top")
    return to_data_uri(fig, tight=False)


def signal_panel(examples: list[dict], x: np.ndarray, xlabel: str, groups: np.ndarray | None = None,
                 group_labels: list[str] | None = None, title: str = "") -> str:
    """Measured (markers) and fitted (lines) normalised signal of a few voxels vs x (usually b), one
    colour per group (e.g. diffusion time); a joint fit's compartments, when an example has them
    ("tissue", "vascular"), as dashed and dotted lines."""
    plt = pyplot()
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
            for key, style in (("tissue", "--"), ("vascular", ":")):
                if key in ex:
                    ax.plot(x[sel], np.asarray(ex[key], float)[sel], style, lw=1, color=colours(g % 10),
                            label=f"{key} compartment" if g == 0 else None)
        ax.set_title(ex.get("title", ""), fontsize=7)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel("S / S0", fontsize=7)
        ax.tick_params(labelsize=6)
    legend = bool(group_labels or any("tissue" in ex for ex in examples))
    if legend:   # below the panels, never over the data
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=6, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0.1 if legend else 0, 1, 1))
    return to_data_uri(fig)


def distributions(values: dict, unit: str, title: str, flagged: set | None = None) -> str:
    """Strip plot with a box per group: values {group label: [(subject label, value), ...]}; points of
    flagged subject labels are drawn as red crosses."""
    plt = pyplot()
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
    ax.set_ylabel(display_unit(unit) or "unitless", fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)
    fig.tight_layout()
    return to_data_uri(fig)


def correlation_matrix(rho: np.ndarray, names: list[str], title: str) -> str:
    """Heat map of a correlation matrix with the coefficients written in the cells."""
    plt = pyplot()
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


def interval_panel(rows: list[dict], n_show: int = 60, title: str = "") -> str:
    """One axis per parameter: the estimates of up to n_show voxels (evenly spaced in rank) as dots with
    their 95 % intervals as bars, sorted by the estimate. rows: {name, unit, est, lo, hi} (arrays)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, max(len(rows), 1), figsize=(3.0 * max(len(rows), 1), 2.4), squeeze=False)
    for ax, r in zip(axes[0], rows):
        est, lo, hi = (np.asarray(r[k], float) for k in ("est", "lo", "hi"))
        ok = np.isfinite(est) & np.isfinite(lo) & np.isfinite(hi)
        est, lo, hi = est[ok], lo[ok], hi[ok]
        if est.size:
            order = np.argsort(est, kind="stable")
            pick = order[np.unique(np.round(np.linspace(0, est.size - 1, min(n_show, est.size))).astype(int))]
            x = np.arange(pick.size)
            ax.vlines(x, lo[pick], hi[pick], color="0.6", lw=1, label="95 % interval")
            ax.plot(x, est[pick], "o", ms=2.5, color="C0", label="estimate")
            width = float(np.median(hi - lo))
            ax.set_title(f"{r['name']} [{display_unit(r['unit'])}]: median interval width {width:.3g}" if r["unit"] else
                         f"{r['name']}: median interval width {width:.3g}", fontsize=7)
        ax.set_xlabel("voxels, sorted by the estimate", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9, x=0.02, ha="left")
    fig.tight_layout()
    return to_data_uri(fig)
