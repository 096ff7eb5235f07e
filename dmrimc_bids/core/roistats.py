"""Region-of-interest statistics and cohort summaries for the group level (numpy/scipy only).

ROI statistics of a map: mean, SD (ddof=1), median, first/third quartile, IQR and voxel count over the
finite values inside the ROI. Cohort summaries: Spearman rank correlation between parameters (pairwise
complete observations) and outlier flags from the robust z-score 0.6745 (x - median) / MAD
(Iglewicz & Hoaglin 1993; |z| > 3.5 flags).
"""

from __future__ import annotations

import numpy as np

STATISTICS = ("mean", "sd", "median", "q1", "q3", "iqr", "n")
OUTLIER_Z = 3.5
OUTLIER_MIN_N = 5  # fewer values give no outlier flags (the MAD of 3-4 values is meaningless)


def roi_statistics(values: np.ndarray, roi: np.ndarray) -> dict:
    """{mean, sd, median, q1, q3, iqr, n} of values[roi] over its finite entries (NaN when empty;
    sd is NaN for a single voxel)."""
    v = np.asarray(values, float)[np.asarray(roi, bool)]
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {k: (0 if k == "n" else np.nan) for k in STATISTICS}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else np.nan, "median": float(med),
            "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1), "n": int(v.size)}


def label_rois(labels: np.ndarray, names: dict) -> dict:
    """{name: boolean ROI} of a label image; names {integer label: name} (0 is background unless named)."""
    labels = np.rint(np.nan_to_num(np.asarray(labels, float))).astype(np.int64)
    return {name: labels == int(k) for k, name in names.items() if (int(k) != 0 or name) and (labels == int(k)).any()}


def spearman_matrix(columns: np.ndarray) -> np.ndarray:
    """Spearman ρ [P, P] between the columns of [N, P] using pairwise complete rows (NaN when fewer
    than 3 rows or a constant column)."""
    from scipy.stats import rankdata

    x = np.asarray(columns, float)
    p = x.shape[1]
    rho = np.full((p, p), np.nan)
    for i in range(p):
        for j in range(i, p):
            ok = np.isfinite(x[:, i]) & np.isfinite(x[:, j])
            if ok.sum() < 3:
                continue
            a, b = rankdata(x[ok, i]), rankdata(x[ok, j])
            if a.std() == 0 or b.std() == 0:
                continue
            rho[i, j] = rho[j, i] = float(np.corrcoef(a, b)[0, 1])
    return rho


def robust_z(values: np.ndarray) -> np.ndarray:
    """0.6745 (x - median) / MAD of the finite values (NaN where x is not finite; 0 when MAD is 0 or
    fewer than OUTLIER_MIN_N values are finite)."""
    x = np.asarray(values, float)
    ok = np.isfinite(x)
    z = np.full(x.shape, np.nan)
    if ok.sum() < OUTLIER_MIN_N:
        z[ok] = 0.0
        return z
    med = np.median(x[ok])
    mad = np.median(np.abs(x[ok] - med))
    z[ok] = 0.0 if mad == 0 else 0.6745 * (x[ok] - med) / mad
    return z


def sample_rows(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of min(n, k) rows drawn without replacement (deterministic for a seed)."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
