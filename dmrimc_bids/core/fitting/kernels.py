"""Per-voxel numerical kernels of the dictionary fit (numba), shared by the CPU and GPU paths.

Every routine below works on one voxel, with scalar maths and caller-provided work arrays only
(no allocation, no NumPy calls), so the same source compiles for the CPU (``njit``, voxels spread
over threads with ``prange``) and for CUDA (gpu.py re-targets the ``py_func`` of each routine).
Each voxel is computed by the same sequence of operations whatever the thread count or chunking,
so CPU results are bit-identical across ``--nprocs``/``--chunk-size``.

Conventions. Parameters live in scaled coordinates z (z_j = (p_j - lo_j)/scale_j, surrogate.py).
A surrogate is a stack of thin-plate-spline (TPS) models; model a has centres C[a, k, :],
weights W[a, k, :], polynomial P[a, :, :] about the origin O[a, :]:

    s(z) = Σ_k φ(|z - C_ak|) W_ak + P_a0 + Σ_j P_a(1+j) (z_j - O_aj),   φ(r) = r² log r.

Data cost per voxel (``rician`` False: offset-Gaussian, likelihood.py; True: Rician):

    offset-Gaussian  Σ_k w_k (y_k - sqrt(s_k² + nf_k²))²
    Rician           Σ_k w_k [(y_k² + s_k²)/(2σ_k²) - log I0(y_k s_k/σ_k²)]   (y-only terms dropped)

with weights w_k summing to 1, plus an L1/L2 penalty on the range-normalised parameters u = z·uscale.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

#: Status codes of the refinement (per voxel).
LM_CONVERGED, LM_MAX_ITER, LM_STALLED = 1, 2, 3


# ---- modified Bessel functions (Abramowitz & Stegun 9.8.1-9.8.4, |rel. error| < 2e-7) ---------------
@njit(cache=True)
def log_i0(x):
    """log I0(x) for x >= 0 (x < 0 uses |x|: I0 is even)."""
    ax = abs(x)
    if ax < 3.75:
        t = (ax / 3.75) ** 2
        return math.log(1.0 + t * (3.5156229 + t * (3.0899424 + t * (1.2067492 + t * (
            0.2659732 + t * (0.0360768 + t * 0.0045813))))))
    t = 3.75 / ax
    p = 0.39894228 + t * (0.01328592 + t * (0.00225319 + t * (-0.00157565 + t * (0.00916281 + t * (
        -0.02057706 + t * (0.02635537 + t * (-0.01647633 + t * 0.00392377)))))))
    return ax - 0.5 * math.log(ax) + math.log(p)


@njit(cache=True)
def bessel_ratio(x):
    """I1(x)/I0(x) for x >= 0 (odd in x)."""
    ax = abs(x)
    if ax < 3.75:
        t = (ax / 3.75) ** 2
        i0 = 1.0 + t * (3.5156229 + t * (3.0899424 + t * (1.2067492 + t * (0.2659732 + t * (
            0.0360768 + t * 0.0045813)))))
        i1 = ax * (0.5 + t * (0.87890594 + t * (0.51498869 + t * (0.15084934 + t * (
            0.02658733 + t * (0.00301532 + t * 0.00032411))))))
        r = i1 / i0
    else:
        t = 3.75 / ax
        p0 = 0.39894228 + t * (0.01328592 + t * (0.00225319 + t * (-0.00157565 + t * (0.00916281 + t * (
            -0.02057706 + t * (0.02635537 + t * (-0.01647633 + t * 0.00392377)))))))
        p1 = 0.39894228 + t * (-0.03988024 + t * (-0.00362018 + t * (0.00163801 + t * (-0.01031555 + t * (
            0.02282967 + t * (-0.02895312 + t * (0.01787654 - t * 0.00420059)))))))
        r = p1 / p0
    return r if x >= 0 else -r


# ---- surrogate ----------------------------------------------------------------------------------
@njit(cache=True)
def tps_eval(z, a, centres, weights, poly, origin, s, jt, want_jac):
    """s[m] = s_a(z); with want_jac also jt[j, m] = ∂s_m/∂z_j (model a, see module docstring)."""
    n_k, d = centres.shape[1], centres.shape[2]
    m = weights.shape[2]
    for i in range(m):
        s[i] = poly[a, 0, i]
    for j in range(d):
        dz = z[j] - origin[a, j]
        for i in range(m):
            s[i] += poly[a, 1 + j, i] * dz
            if want_jac:
                jt[j, i] = poly[a, 1 + j, i]
    for k in range(n_k):
        r2 = 0.0
        for j in range(d):
            t = z[j] - centres[a, k, j]
            r2 += t * t
        if r2 > 0.0:
            lr2 = math.log(r2)
            phi = 0.5 * r2 * lr2
            for i in range(m):
                s[i] += phi * weights[a, k, i]
            if want_jac:
                g = lr2 + 1.0  # ∇φ = (log r² + 1)(z - c)
                for j in range(d):
                    gj = g * (z[j] - centres[a, k, j])
                    for i in range(m):
                        jt[j, i] += gj * weights[a, k, i]


# ---- objective ----------------------------------------------------------------------------------
@njit(cache=True)
def data_cost(y, w, sig2, flo2, rician, s, jt, want_grad, grad, hess):
    """Data cost of one voxel at signals s; with want_grad also its gradient grad[d] and
    Gauss-Newton (Fisher) Hessian hess[d, d] w.r.t. z, given jt = ∂s/∂z."""
    m = y.shape[0]
    d = jt.shape[0]
    if want_grad:
        for j in range(d):
            grad[j] = 0.0
            for l in range(d):
                hess[j, l] = 0.0
    c = 0.0
    for i in range(m):
        if rician:
            v = sig2[i]
            z = y[i] * s[i] / v
            c += w[i] * ((y[i] * y[i] + s[i] * s[i]) / (2.0 * v) - log_i0(z))
            de = w[i] * (s[i] - y[i] * bessel_ratio(z)) / v
            h = w[i] / v
        else:
            g = math.sqrt(s[i] * s[i] + flo2[i])
            r = y[i] - g
            c += w[i] * r * r
            q = s[i] / g if g > 0.0 else 1.0
            de = -2.0 * w[i] * r * q
            h = 2.0 * w[i] * q * q
        if want_grad:
            for j in range(d):
                grad[j] += de * jt[j, i]
                hj = h * jt[j, i]
                for l in range(j + 1):
                    hess[j, l] += hj * jt[l, i]
    if want_grad:
        for j in range(d):
            for l in range(j):
                hess[l, j] = hess[j, l]
    return c


@njit(cache=True)
def penalty(z, uscale, reg_norm, reg_w, want_grad, grad, hess):
    """L1/L2 penalty reg_w·Σ|u - 1/2|^norm on u = z·uscale; adds its derivatives to grad/hess."""
    if reg_w == 0.0:
        return 0.0
    p = 0.0
    for j in range(z.shape[0]):
        u = z[j] * uscale[j] - 0.5
        if reg_norm == 2:
            p += reg_w * u * u
            if want_grad:
                grad[j] += 2.0 * reg_w * u * uscale[j]
                hess[j, j] += 2.0 * reg_w * uscale[j] * uscale[j]
        else:
            p += reg_w * abs(u)
            if want_grad:
                a = math.sqrt(u * u + 1e-6)  # smoothed |u| for the derivatives
                grad[j] += reg_w * u / a * uscale[j]
                hess[j, j] += reg_w / a * uscale[j] * uscale[j]
    return p


@njit(cache=True)
def solve_spd(a, b, free, x):
    """Solve a x = b on the free coordinates (Cholesky, in place on a); fixed ones get x = 0.
    Returns False when a is not positive definite."""
    d = b.shape[0]
    for j in range(d):
        if free[j] == 0.0:
            continue
        s = a[j, j]
        for k in range(j):
            if free[k] != 0.0:
                s -= a[j, k] * a[j, k]
        if not s > 0.0:
            return False
        a[j, j] = math.sqrt(s)
        for i in range(j + 1, d):
            if free[i] == 0.0:
                continue
            t = a[i, j]
            for k in range(j):
                if free[k] != 0.0:
                    t -= a[i, k] * a[j, k]
            a[i, j] = t / a[j, j]
    for i in range(d):  # forward: L u = b
        if free[i] == 0.0:
            x[i] = 0.0
            continue
        t = b[i]
        for k in range(i):
            if free[k] != 0.0:
                t -= a[i, k] * x[k]
        x[i] = t / a[i, i]
    for i in range(d - 1, -1, -1):  # back: Lᵀ x = u
        if free[i] == 0.0:
            continue
        t = x[i]
        for k in range(i + 1, d):
            if free[k] != 0.0:
                t -= a[k, i] * x[k]
        x[i] = t / a[i, i]
    return True


@njit(cache=True)
def lm_voxel(y, w, sig2, flo2, rician, z, a, centres, weights, poly, origin, lo, hi, uscale,
             reg_norm, reg_w, max_iter, s, jt, s_t, jt_t, vec, mat):
    """Projected Levenberg-Marquardt on model a from z (updated in place), inside [lo, hi].

    Work arrays: s, s_t [m]; jt, jt_t [d, m]; vec [5, d]; mat [2, d, d]. Variables on a bound whose
    gradient points outwards are held (active set). Returns (cost, iterations, status)."""
    d = z.shape[0]
    grad, z_t, step, free, rhs = vec[0], vec[1], vec[2], vec[3], vec[4]
    hess, amat = mat[0], mat[1]
    for j in range(d):
        z[j] = min(max(z[j], lo[j]), hi[j])
    tps_eval(z, a, centres, weights, poly, origin, s, jt, True)
    cost = data_cost(y, w, sig2, flo2, rician, s, jt, True, grad, hess)
    cost += penalty(z, uscale, reg_norm, reg_w, True, grad, hess)
    mu = 1e-3
    status = LM_MAX_ITER
    it = 0
    while it < max_iter:
        it += 1
        n_free = 0
        for j in range(d):
            held = (z[j] <= lo[j] and grad[j] > 0.0) or (z[j] >= hi[j] and grad[j] < 0.0)
            free[j] = 0.0 if held else 1.0
            if not held:
                n_free += 1
        if n_free == 0:
            status = LM_CONVERGED
            break
        for j in range(d):
            rhs[j] = -grad[j]
            for l in range(d):
                amat[j, l] = hess[j, l]
            amat[j, j] += mu * (hess[j, j] + 1e-12)
        if not solve_spd(amat, rhs, free, step):
            mu *= 10.0
            if mu > 1e10:
                status = LM_STALLED
                break
            continue
        moved = 0.0
        for j in range(d):
            z_t[j] = min(max(z[j] + step[j], lo[j]), hi[j])
            moved = max(moved, abs(z_t[j] - z[j]))
        if moved == 0.0:
            status = LM_CONVERGED
            break
        tps_eval(z_t, a, centres, weights, poly, origin, s_t, jt_t, True)
        c_t = data_cost(y, w, sig2, flo2, rician, s_t, jt_t, False, grad, hess)
        c_t += penalty(z_t, uscale, reg_norm, reg_w, False, grad, hess)
        if c_t < cost:
            gain = (cost - c_t) / max(abs(cost), 1e-300)
            for j in range(d):
                z[j] = z_t[j]
            for i in range(s.shape[0]):
                s[i] = s_t[i]
                for j in range(d):
                    jt[j, i] = jt_t[j, i]
            cost = data_cost(y, w, sig2, flo2, rician, s, jt, True, grad, hess)
            cost += penalty(z, uscale, reg_norm, reg_w, True, grad, hess)
            mu = max(mu / 3.0, 1e-12)
            if gain < 1e-5 or moved < 1e-3:
                status = LM_CONVERGED
                break
        else:
            mu *= 4.0
            if mu > 1e10:
                status = LM_STALLED
                break
    return cost, it, status


# ---- CPU drivers (all voxels of a chunk; one thread per voxel range) ------------------------------
@njit(cache=True, parallel=True)
def grid_search(y, w, flo2, signals_t, entry_pen, best, best_cost):
    """Exact offset-Gaussian grid search: best[v] = argmin_e Σ_k w_k (y_vk - sqrt(S_ke² + nf_vk²))² + pen_e.

    signals_t is the dictionary transposed [M, E] (the entry loop is innermost and vectorises);
    entry_pen [E] holds the penalty (inf outside the bounds)."""
    n_v, m = y.shape
    n_e = signals_t.shape[1]
    for v in prange(n_v):
        cost = np.empty(n_e)
        for e in range(n_e):
            cost[e] = 0.0
        for i in range(m):
            yi = y[v, i]
            f2 = flo2[v, i]
            wi = w[i]
            for e in range(n_e):
                sv = signals_t[i, e]
                r = yi - math.sqrt(sv * sv + f2)
                cost[e] += wi * r * r
        b = -1
        bc = np.inf
        for e in range(n_e):
            c = cost[e] + entry_pen[e]
            if c < bc:
                bc = c
                b = e
        best[v] = b
        best_cost[v] = bc


@njit(cache=True, parallel=True)
def refine(y, w, sig2, flo2, rician, z, anchor, centres, weights, poly, origin, box_lo, box_hi, uscale,
           reg_norm, reg_w, max_iter, cost, iters, status):
    """lm_voxel for every voxel v on model anchor[v], inside that model's box (rician [V] bool)."""
    n_v, m = y.shape
    d = z.shape[1]
    for v in prange(n_v):
        s = np.empty(m)
        s_t = np.empty(m)
        jt = np.empty((d, m))
        jt_t = np.empty((d, m))
        vec = np.empty((5, d))
        mat = np.empty((2, d, d))
        a = anchor[v]
        c, it, st = lm_voxel(y[v], w, sig2[v], flo2[v], rician[v], z[v], a, centres, weights, poly, origin,
                             box_lo[a], box_hi[a], uscale, reg_norm, reg_w, max_iter,
                             s, jt, s_t, jt_t, vec, mat)
        cost[v] = c
        iters[v] += it
        status[v] = st


@njit(cache=True)
def evaluate(y, w, sig2, flo2, rician, z, anchor, centres, weights, poly, origin, uscale, reg_norm, reg_w,
             s_out, jt_out, cost):
    """Surrogate signals s_out [V, M], Jacobian jt_out [V, d, M] and total cost at z (per voxel)."""
    n_v, m = y.shape
    d = z.shape[1]
    for v in range(n_v):
        vec = np.empty((5, d))
        mat = np.empty((2, d, d))
        tps_eval(z[v], anchor[v], centres, weights, poly, origin, s_out[v], jt_out[v], True)
        c = data_cost(y[v], w, sig2[v], flo2[v], rician[v], s_out[v], jt_out[v], False, vec[0], mat[0])
        cost[v] = c + penalty(z[v], uscale, reg_norm, reg_w, False, vec[0], mat[0])


@njit(cache=True)
def entry_cost(y, w, sig2, flo2, rician, signals, entry, entry_pen, cost):
    """Total cost of dictionary entry entry[v] (exact signals) for every voxel v."""
    n_v = y.shape[0]
    for v in range(n_v):
        jt = np.empty((1, 1))
        vec = np.empty(1)
        mat = np.empty((1, 1))
        e = entry[v]
        cost[v] = data_cost(y[v], w, sig2[v], flo2[v], rician[v], signals[e], jt, False, vec, mat) + entry_pen[e]


@njit(cache=True)
def penalties(z, uscale, reg_norm, reg_w, out):
    """penalty() of every row of z [E, d] into out [E]."""
    d = z.shape[1]
    g = np.empty(d)
    h = np.empty((d, d))
    for e in range(z.shape[0]):
        out[e] = penalty(z[e], uscale, reg_norm, reg_w, False, g, h)


@njit(cache=True)
def offset_residual(y, s, flo2):
    """Residual of a measurement y against a noise-free signal s under the offset-Gaussian likelihood,
    y - sqrt(s² + nf²) (flo2 = nf², 0 for Gaussian noise): the posterior's likelihood on CPU and GPU."""
    return y - math.sqrt(s * s + flo2)


@njit(cache=True)
def cost_row(y, flo2, signals_t, clean, k, row):
    """One voxel's likelihood cost of every entry into row [E], measurement by measurement (vectorised over
    entries): Σ_m (y_m - sqrt(S_me² + nf_m²))² (flo2 [M] = nf²), minus k (|c|² - <c, S_e>)² where k != 0
    (clean [M] the floor-corrected data c, k = τ²/(σ² + τ²|c|²): an unknown common scale of the signal
    marginalised, its shape standing in for the model's, as τ << 1; clean is not read when k = 0)."""
    m = y.shape[0]
    n_e = signals_t.shape[1]
    for e in range(n_e):
        row[e] = 0.0
    for i in range(m):
        yi = y[i]
        f2 = flo2[i]
        for e in range(n_e):
            r = offset_residual(yi, signals_t[i, e], f2)
            row[e] += r * r
    if k != 0.0:
        cs = np.zeros(n_e)
        cc = 0.0
        for i in range(m):
            ci = clean[i]
            cc += ci * ci
            for e in range(n_e):
                cs[e] += ci * signals_t[i, e]
        for e in range(n_e):
            d = cc - cs[e]
            row[e] -= k * d * d


@njit(cache=True, parallel=True)
def entry_costs(y, flo2, signals_t, cost):
    """Offset-Gaussian cost of every entry for every voxel (cost_row): cost[v, e] = Σ_m (y_vm -
    sqrt(S_me² + nf_vm²))² (signals_t [M, E], the dictionary transposed; flo2 [V, M] the squared noise floor;
    the posterior's likelihood, core/fitting/posterior.py)."""
    for v in prange(y.shape[0]):
        cost_row(y[v], flo2[v], signals_t, y[v], 0.0, cost[v])


@njit(cache=True, parallel=True)
def entry_costs_common_scale(y, flo2, signals_t, clean, kappa, cost):
    """entry_costs with an unknown common scale of each voxel's signal marginalised (cost_row with
    k = kappa[v]; clean [V, M] the floor-corrected data)."""
    for v in prange(y.shape[0]):
        cost_row(y[v], flo2[v], signals_t, clean[v], kappa[v], cost[v])


@njit(cache=True)
def likelihood_cost(y, flo2, signals_t, clean, e, k, cc):
    """entry_costs_common_scale's cost of entry e for one voxel (y, flo2, clean [M]; k its κ, cc = |clean|²);
    entry_costs' where k = 0 (clean is then not read)."""
    c = 0.0
    for i in range(y.shape[0]):
        r = offset_residual(y[i], signals_t[i, e], flo2[i])
        c += r * r
    if k != 0.0:
        cs = 0.0
        for i in range(y.shape[0]):
            cs += clean[i] * signals_t[i, e]
        c -= k * (cc - cs) * (cc - cs)
    return c


@njit(cache=True)
def _above(c1, e1, c2, e2):
    """(c1, e1) > (c2, e2), lexicographic: the order of heap_push's max-heap."""
    return c1 > c2 or (c1 == c2 and e1 > e2)


@njit(cache=True)
def heap_push(heap_c, heap_e, size, n, a, e):
    """Offer entry e of cost a to the max-heap heap_c/heap_e of the n least (cost, index) pairs seen so far,
    holding ``size`` of them; entries must come in increasing e. Returns the new size. A later entry of cost
    equal to the largest held has the larger index and stays out, so ties at the n-th cost keep the lower
    indices."""
    if size < n:   # sift up
        j = size
        while j > 0:
            parent = (j - 1) // 2
            if not _above(a, e, heap_c[parent], heap_e[parent]):
                break
            heap_c[j] = heap_c[parent]
            heap_e[j] = heap_e[parent]
            j = parent
        heap_c[j] = a
        heap_e[j] = e
        return size + 1
    if a < heap_c[0]:   # replaces the largest: sift down
        j = 0
        while True:
            child = 2 * j + 1
            if child >= n:
                break
            if child + 1 < n and _above(heap_c[child + 1], heap_e[child + 1], heap_c[child], heap_e[child]):
                child += 1
            if not _above(heap_c[child], heap_e[child], a, e):
                break
            heap_c[j] = heap_c[child]
            heap_e[j] = heap_e[child]
            j = child
        heap_c[j] = a
        heap_e[j] = e
    return size


@njit(cache=True)
def _noise_var(var, rss, m):
    """σ² where known (> 0, finite), else max(rss / M, 1e-12)."""
    return var if var > 0.0 and var < math.inf else max(rss / m, 1e-12)


@njit(cache=True)
def select_voxel(y, flo2, signals_t, clean, k, log_prior, var, use_prior, n, heap_c, heap_e):
    """The posterior's likelihood and retained-entry selection of one voxel in one pass over the entries
    (the GPU's: one thread per voxel, no cost row held): the n entries of least cost (likelihood_cost,
    minus 2σ²·log_prior[e] when use_prior) by (cost, entry index) into heap_c/heap_e [n] (heap_push's
    order). var: σ², <= 0 or not finite where unknown (then from the least misfit, found by a first pass
    when the prior needs it). Returns rss, the least cost of any entry without the prior."""
    m = y.shape[0]
    n_e = signals_t.shape[1]
    cc = 0.0
    if k != 0.0:
        for i in range(m):
            cc += clean[i] * clean[i]
    rss = math.inf
    if use_prior and not (var > 0.0 and var < math.inf):
        for e in range(n_e):
            rss = min(rss, likelihood_cost(y, flo2, signals_t, clean, e, k, cc))
    pen = 2.0 * _noise_var(var, rss, m) if use_prior else 0.0
    size = 0
    for e in range(n_e):
        raw = likelihood_cost(y, flo2, signals_t, clean, e, k, cc)
        rss = min(rss, raw)
        a = raw - pen * log_prior[e] if use_prior else raw
        if size < n or a < heap_c[0]:
            size = heap_push(heap_c, heap_e, size, n, a, e)
    return rss


@njit(cache=True, parallel=True)
def select_smallest(y, flo2, signals_t, clean, kappa, log_prior, var, use_prior, top, c_top, rss):
    """select_voxel's result for every voxel v (the CPU's way: the voxel's cost row first, measurement by
    measurement so that it vectorises over entries, then heap_push): top[v], c_top[v] [V, n] its n
    retained entries and their costs (heap order), rss [V] (signals_t [M, E]; clean [V, M] and kappa [V]
    the common-scale term, kappa 0 for none)."""
    n_v, m = y.shape
    n_e = signals_t.shape[1]
    n = top.shape[1]
    for v in prange(n_v):
        row = np.empty(n_e)
        cost_row(y[v], flo2[v], signals_t, clean[v], kappa[v], row)
        r_min = math.inf
        for e in range(n_e):
            r_min = min(r_min, row[e])
        rss[v] = r_min
        pen = 2.0 * _noise_var(var[v], r_min, m) if use_prior else 0.0
        if use_prior:
            for e in range(n_e):
                row[e] -= pen * log_prior[e]
        hc = np.empty(n)
        he = np.empty(n, np.int64)
        size = 0
        for e in range(n_e):
            if size < n or row[e] < hc[0]:   # most entries fail this test: heap_push only for the others
                size = heap_push(hc, he, size, n, row[e], e)
        for j in range(n):
            top[v, j] = he[j]
            c_top[v, j] = hc[j]


@njit(cache=True)
def _bounded_raw(a0, d, eps):
    """(lower, upper) bounds of an entry's offset-Gaussian misfit Σ_m (y_m - sqrt(S_m² + nf²))² from a0, the
    misfit at the reference floor f0 computed to within eps (a matrix product), where d >= |nf - f0|·sqrt(M)
    bounds how far sqrt(misfit) moves with the floor (|∂ sqrt(S² + f²)/∂f| <= 1, the triangle inequality)."""
    hi = math.sqrt(max(a0 + eps, 0.0)) + d
    lo = max(math.sqrt(max(a0 - eps, 0.0)) - d, 0.0)
    return lo * lo, hi * hi


@njit(cache=True)
def _sample_cut(row, n, heap_c, heap_e):
    """A value that about 2n of row's [E] values are at most (the k-th least of a strided sample of them;
    inf where E is under 16 n): the pre-selection of select_voxel_bounded. heap_c/heap_e [>= n] work space."""
    n_e = row.shape[0]
    step = n_e // (8 * n)
    if step < 2:
        return math.inf
    k = min((n_e + step - 1) // step, 2 * ((n + step - 1) // step) + 8)
    size = 0
    for e in range(0, n_e, step):
        if size < k or row[e] < heap_c[0]:
            size = heap_push(heap_c, heap_e, size, k, row[e], e)
    return heap_c[0]


@njit(cache=True)
def _collect(key, cut, cand):
    """The entries e with key[e] <= cut, in increasing e, into cand; returns how many."""
    count = 0
    for e in range(key.shape[0]):
        if key[e] <= cut:
            cand[count] = e
            count += 1
    return count


@njit(cache=True)
def select_voxel_bounded(y, flo2, signals_t, clean, k, log_prior, var, use_prior, n, upper, d, eps, lower, cand,
                         heap_c, heap_e):
    """select_voxel's result (the same entries, costs and rss, bit for bit) from bounds: upper [E] holds every
    entry's misfit at a reference floor f0, |y - G_e|² with G = sqrt(S² + f0²), to within eps (misfit_rows;
    overwritten), d as in _bounded_raw; lower [E] and cand [E] are work space.
    Every entry's exact cost lies between its bounds (the common-scale term, computed here, and the prior
    shift too): the n-th least upper bound is a cut that the n least costs (by (cost, index)) cannot exceed,
    and only the entries whose lower bound is under it get their exact cost (likelihood_cost). Without the
    common-scale term and the prior both bounds increase with <y, G_e>'s misfit, so that misfit is the key."""
    m = y.shape[0]
    cc = 0.0
    if k != 0.0:   # clean is not read where k = 0
        for i in range(m):
            cc += clean[i] * clean[i]
    n_e = upper.shape[0]
    monotone = k == 0.0 and not use_prior
    if not monotone:
        for e in range(n_e):
            lo, hi = _bounded_raw(upper[e], d, eps)
            upper[e] = hi + 1e-12 * hi
            lower[e] = lo - 1e-12 * hi
    if k != 0.0:   # minus k (|c|² - <c, S_e>)²: likelihood_cost's own sum, measurement by measurement
        cs = np.zeros(n_e)
        for i in range(m):
            ci = clean[i]
            for e in range(n_e):
                cs[e] += ci * signals_t[i, e]
        for e in range(n_e):
            t = k * (cc - cs[e]) * (cc - cs[e])
            upper[e] -= t - 1e-12 * t
            lower[e] -= t + 1e-12 * t
    rss = math.inf
    pen = 0.0
    if use_prior:   # the least cost lies under the least upper bound: rss among the entries below it
        r_up = math.inf
        for e in range(n_e):
            r_up = min(r_up, upper[e])
        for e in range(n_e):
            if lower[e] <= r_up:
                rss = min(rss, likelihood_cost(y, flo2, signals_t, clean, e, k, cc))
        pen = 2.0 * _noise_var(var, rss, m)
        for e in range(n_e):
            upper[e] -= pen * log_prior[e]
            lower[e] -= pen * log_prior[e]
    # the n-th least upper bound, from the entries a sample's cut lets through
    pre = _sample_cut(upper, n, heap_c, heap_e)
    count = _collect(upper if monotone else lower, pre, cand)
    size = 0
    for j in range(count):
        e = cand[j]
        if upper[e] <= pre and (size < n or upper[e] < heap_c[0]):
            size = heap_push(heap_c, heap_e, size, n, upper[e], e)
    if size < n:   # fewer than n under the sample's cut: every entry
        pre = math.inf
        count = _collect(upper if monotone else lower, pre, cand)
        size = 0
        for j in range(count):
            e = cand[j]
            if size < n or upper[e] < heap_c[0]:
                size = heap_push(heap_c, heap_e, size, n, upper[e], e)
    cut = heap_c[0]
    if monotone:   # the cut on the misfit at f0 whose lower bound reaches the n-th least upper bound
        cut = (math.sqrt(_bounded_raw(cut, d, eps)[1] * (1.0 + 1e-12)) + d) ** 2 + eps
        cut += 1e-12 * cut
        if cut > pre:   # candidates beyond those collected
            count = _collect(upper, cut, cand)
    key = upper if monotone else lower
    size = 0
    for j in range(count):
        e = cand[j]
        if key[e] <= cut:
            c = likelihood_cost(y, flo2, signals_t, clean, e, k, cc)
            if not use_prior:
                rss = min(rss, c)   # the least cost is among these: its lower bound is under cut
            a = c - pen * log_prior[e] if use_prior else c
            if size < n or a < heap_c[0]:
                size = heap_push(heap_c, heap_e, size, n, a, e)
    return rss


@njit(cache=True)
def misfit_rows(y, v0, nb, g_t, gg, r0, r1, r2, r3):
    """r_j[e] = |y_v - G_e|² = |y_v|² - 2 <y_v, G_e> + |G_e|² for the nb <= 4 voxels v = v0 + j (g_t [M, E]
    the dictionary at a reference floor, transposed; gg [E] = |G_e|²): four voxels per pass over g_t, so each
    of its values is loaded once for four products and the loops over entries vectorise (four separate
    arrays: rows of one 2-D array would not, as the compiler cannot tell them apart)."""
    m, n_e = g_t.shape
    yy = np.zeros(4)
    a = np.zeros((4, m))
    for j in range(nb):
        for i in range(m):
            yy[j] += y[v0 + j, i] * y[v0 + j, i]
            a[j, i] = -2.0 * y[v0 + j, i]
    for e in range(n_e):
        r0[e] = yy[0] + gg[e]
        r1[e] = yy[1] + gg[e]
        r2[e] = yy[2] + gg[e]
        r3[e] = yy[3] + gg[e]
    for i in range(m):
        a0, a1, a2, a3 = a[0, i], a[1, i], a[2, i], a[3, i]
        for e in range(n_e):
            x = g_t[i, e]
            r0[e] += a0 * x
            r1[e] += a1 * x
            r2[e] += a2 * x
            r3[e] += a3 * x


@njit(cache=True, parallel=True)
def select_smallest_bounded(y, flo2, signals_t, clean, kappa, log_prior, var, use_prior, g_t, gg, slack, parts, top,
                            c_top, rss):
    """select_smallest's result for every voxel v from bounds (select_voxel_bounded): g_t [M, E] the
    dictionary at the voxels' reference floor, transposed, gg [E] = |G_e|², slack [V, 2] = (d, eps) of each
    voxel. The voxels are split into ``parts`` ranges (one per thread), each with its own work space."""
    n_v = y.shape[0]
    n_e = gg.shape[0]
    n = top.shape[1]
    parts = max(1, min(n_v, parts))
    for part in prange(parts):
        hc = np.empty(2 * n + 16)   # _sample_cut's heap holds up to n + 8
        he = np.empty(2 * n + 16, np.int64)
        rows = (np.empty(n_e), np.empty(n_e), np.empty(n_e), np.empty(n_e))
        lower = np.empty(n_e)
        cand = np.empty(n_e, np.int64)
        v_stop = (part + 1) * n_v // parts
        for v0 in range(part * n_v // parts, v_stop, 4):
            nb = min(4, v_stop - v0)
            misfit_rows(y, v0, nb, g_t, gg, rows[0], rows[1], rows[2], rows[3])
            for j in range(nb):
                v = v0 + j
                rss[v] = select_voxel_bounded(y[v], flo2[v], signals_t, clean[v], kappa[v], log_prior, var[v],
                                              use_prior, n, rows[j], slack[v, 0], slack[v, 1], lower, cand, hc, he)
                for t in range(n):
                    top[v, t] = he[t]
                    c_top[v, t] = hc[t]


@njit(cache=True)
def _sift_down_min(key, heap, size, j):
    """Restore the min-heap heap[:size] (indices into key, least key first) below position j."""
    while True:
        child = 2 * j + 1
        if child >= size:
            return
        if child + 1 < size and key[heap[child + 1]] < key[heap[child]]:
            child += 1
        if key[heap[child]] >= key[heap[j]]:
            return
        heap[j], heap[child] = heap[child], heap[j]
        j = child


@njit(cache=True)
def select_voxel_leaves(y, flo2, signals_t, n, g_leaf, perm, leaf_start, centres, radii, d, leaf_key, leaf_heap,
                        misfit, cand, heap_c, heap_e):
    """select_voxel's result without the common-scale term and the prior (the same entries, costs and rss, bit
    for bit), visiting only the leaves of a tree over the dictionary that can hold one of the n least: g_leaf
    [E, M] the dictionary at a reference floor f0, G = sqrt(S² + f0²), its rows in leaf order (entry perm[r] in
    row r; leaf l the rows leaf_start[l]:leaf_start[l + 1]), centres [L, M] and radii [L] each leaf's ball
    around its rows, d >= |nf - f0|·sqrt(M) (_bounded_raw: |sqrt(cost) - |y - G_e|| <= d). Leaves are
    visited by least distance to their ball, each member's |y - G_e|² computed, until no ball is near enough
    to hold an entry whose cost can be under the n-th least; then the entries whose lower bound is under the
    n-th least upper bound get their exact cost (likelihood_cost), in increasing entry order (heap_push's ties).
    leaf_key [L], leaf_heap [L], misfit [E], cand [E] are work space. Returns rss."""
    m = y.shape[0]
    n_leaves = radii.shape[0]
    for lf in range(n_leaves):
        s2 = 0.0
        for i in range(m):
            t = y[i] - centres[lf, i]
            s2 += t * t
        leaf_key[lf] = max(math.sqrt(s2) * (1.0 - 1e-12) - radii[lf] * (1.0 + 1e-12) - 1e-12, 0.0)
        leaf_heap[lf] = lf
    for j in range(n_leaves // 2 - 1, -1, -1):
        _sift_down_min(leaf_key, leaf_heap, n_leaves, j)
    size = 0
    left = n_leaves
    n_visited = 0
    reach = math.inf   # sqrt of the n-th least misfit so far (widened) + 2d: no unvisited ball is nearer
    while left > 0:
        lf = leaf_heap[0]
        if size == n and leaf_key[lf] > reach:
            break
        left -= 1
        leaf_heap[0] = leaf_heap[left]
        _sift_down_min(leaf_key, leaf_heap, left, 0)
        for r in range(leaf_start[lf], leaf_start[lf + 1]):
            a = 0.0
            for i in range(m):
                t = y[i] - g_leaf[r, i]
                a += t * t
            misfit[n_visited] = a
            cand[n_visited] = r
            n_visited += 1
            if size < n or a < heap_c[0]:
                size = heap_push(heap_c, heap_e, size, n, a, r)
        if size == n:
            reach = math.sqrt(heap_c[0] * (1.0 + 1e-12)) + 2.0 * d + 1e-12
    # the candidates: lower bound max(sqrt(a) - d, 0)² under the n-th least upper bound (sqrt(t) + d)²
    count = 0
    for j in range(n_visited):
        if math.sqrt(misfit[j]) <= reach:
            cand[count] = perm[cand[j]]
            count += 1
    cand[:count].sort()
    rss = math.inf
    size = 0
    for j in range(count):
        e = cand[j]
        c = likelihood_cost(y, flo2, signals_t, y, e, 0.0, 0.0)
        rss = min(rss, c)
        if size < n or c < heap_c[0]:
            size = heap_push(heap_c, heap_e, size, n, c, e)
    return rss


@njit(cache=True, parallel=True)
def select_smallest_leaves(y, flo2, signals_t, g_leaf, perm, leaf_start, centres, radii, dist, parts, top, c_top, rss):
    """select_smallest's result without the common-scale term and the prior, for every voxel v
    (select_voxel_leaves; dist [V] each voxel's d), the voxels split into ``parts`` ranges (one per thread)."""
    n_v = y.shape[0]
    n_e = g_leaf.shape[0]
    n_leaves = radii.shape[0]
    n = top.shape[1]
    parts = max(1, min(n_v, parts))
    for part in prange(parts):
        hc = np.empty(n)
        he = np.empty(n, np.int64)
        leaf_key = np.empty(n_leaves)
        leaf_heap = np.empty(n_leaves, np.int64)
        misfit = np.empty(n_e)
        cand = np.empty(n_e, np.int64)
        for v in range(part * n_v // parts, (part + 1) * n_v // parts):
            rss[v] = select_voxel_leaves(y[v], flo2[v], signals_t, n, g_leaf, perm, leaf_start, centres, radii, dist[v],
                                         leaf_key, leaf_heap, misfit, cand, hc, he)
            for t in range(n):
                top[v, t] = he[t]
                c_top[v, t] = hc[t]


@njit(cache=True)
def _solve_pivoted(a, b):
    """Solve a x = b in place (Gaussian elimination with partial pivoting, a [d, d], b [d, k]; x into b)."""
    d = a.shape[0]
    for j in range(d):
        piv = j
        for i in range(j + 1, d):
            if abs(a[i, j]) > abs(a[piv, j]):
                piv = i
        if piv != j:
            for t in range(d):
                a[j, t], a[piv, t] = a[piv, t], a[j, t]
            for t in range(b.shape[1]):
                b[j, t], b[piv, t] = b[piv, t], b[j, t]
        for i in range(j + 1, d):
            f = a[i, j] / a[j, j]
            for t in range(j, d):
                a[i, t] -= f * a[j, t]
            for t in range(b.shape[1]):
                b[i, t] -= f * b[j, t]
    for j in range(d - 1, -1, -1):
        for t in range(b.shape[1]):
            x = b[j, t]
            for i in range(j + 1, d):
                x -= a[j, i] * b[i, t]
            b[j, t] = x / a[j, j]


@njit(cache=True)
def _argsort_keys(keys, order, spare, spare_keys, count):
    """order [n] = the stable argsort of the unsigned 64-bit keys [n] (overwritten): a least-significant-digit
    radix sort, a byte a pass (a pass where every key has the same byte is skipped). Stable, and without the
    data-dependent branches whose mispredictions make a comparison sort of a few hundred samples cost several
    µs. Work space: spare [n] int64, spare_keys [n] uint64, count [256] int64."""
    n = keys.shape[0]
    for i in range(n):
        order[i] = i
    src_o, src_k, dst_o, dst_k = order, keys, spare, spare_keys
    for shift in range(0, 64, 8):
        sh = np.uint64(shift)
        for d in range(256):
            count[d] = 0
        for i in range(n):
            count[np.int64((src_k[i] >> sh) & np.uint64(255))] += 1
        if count[np.int64((src_k[0] >> sh) & np.uint64(255))] == n:
            continue
        pos = 0
        for d in range(256):
            c = count[d]
            count[d] = pos
            pos += c
        for i in range(n):
            d = np.int64((src_k[i] >> sh) & np.uint64(255))
            dst_o[count[d]] = src_o[i]
            dst_k[count[d]] = src_k[i]
            count[d] += 1
        src_o, src_k, dst_o, dst_k = dst_o, dst_k, src_o, src_k
    if src_o is not order:
        for i in range(n):
            order[i] = src_o[i]


@njit(cache=True)
def _argsort_stable(x, order, keys, spare, spare_keys, count):
    """order [n] = np.argsort(x, kind="stable") for x [n] without NaN (-0.0 sorted as 0.0), by _argsort_keys on
    the doubles' order-preserving 64-bit keys (keys [n] uint64 work space, as the others)."""
    bits = x.view(np.uint64)
    for i in range(x.shape[0]):
        u = np.uint64(0) if x[i] == 0.0 else bits[i]
        keys[i] = ~u if u >> np.uint64(63) else u | np.uint64(0x8000000000000000)
    _argsort_keys(keys, order, spare, spare_keys, count)


@njit(cache=True)
def _weighted_median(x, w, order, keys, spare, spare_keys, count):
    """(median, tied): the 0.5-quantile of samples x [n] with weights w [n] (summing to 1), interpolated between
    the samples' mid-cumulative weights (posterior.weighted_quantile, sorted stably), and whether a sample it is
    read from has a twin of equal value (samples clipped to a range's end): there the value depends on the
    sort's order among the twins. order, spare [n] int64, keys, spare_keys [n] uint64, count [256] int64: work
    space (_argsort_stable)."""
    n = x.shape[0]
    if n == 1:
        return x[0], False
    _argsort_stable(x, order, keys, spare, spare_keys, count)
    cum = 0.0
    prev_c = 0.0
    j = n   # every mid-cumulative weight under 0.5: the last sample
    for t in range(n):
        k = order[t]
        c = cum + 0.5 * w[k]
        cum += w[k]
        if c >= 0.5 and t >= 1:
            j = t
            break
        prev_c = c
    if j == n:
        x1 = x[order[n - 1]]
        return x1, x[order[n - 2]] == x1
    x0, x1 = x[order[j - 1]], x[order[j]]
    tied = x0 == x1 or (j >= 2 and x[order[j - 2]] == x0) or (j + 1 < n and x[order[j + 1]] == x1)
    frac = min(max((0.5 - prev_c) / max(c - prev_c, 1e-300), 0.0), 1.0)
    return x0 + frac * (x1 - x0), tied


@njit(cache=True)
def posterior_voxel(top, c, var, clean, tau, signals, values, z_entries, mu, comps, log_prior, design_log_prior,
                    prior_design, reweight, lo_t, hi_t, q, ridge, median, point, var_out, w, adj, tied):
    """The posterior of one voxel from its n retained entries top [n] and their costs c [n] (both re-ordered
    here by entry), σ² var (posterior.PosteriorModel.posterior, step by step): the posterior weights, the
    regression's kernel weights (at least REGRESSION_NEIGHBOURS entries wide: q the index of that cost), the
    local-linear regression of the parameters values [E, P] on the principal-component coordinates z_entries
    [E, r] of the entries about those of the data (clean [M] the floor-corrected data, divided by its common
    scale at the best entry where tau > 0; mu [M], comps [r, M] the components), the adjusted samples clipped
    to [lo_t, hi_t], and per parameter its point estimate (weighted median or mean) and variance (spread + σ²
    |slope|²) under the posterior's weights or, where reweight[p] = ±1, reweighted by exp(±design_log_prior).
    Also written: w [n] the posterior weights, adj [P, n] the adjusted samples, tied [P] where the median is
    read from samples with twins (_weighted_median)."""
    n = top.shape[0]
    m = clean.shape[0]
    r = comps.shape[0]
    n_p = values.shape[1]
    order, spare = np.empty(n, np.int64), np.empty(n, np.int64)   # _argsort_keys' work space, reused below
    keys, spare_keys, count = np.empty(n, np.uint64), np.empty(n, np.uint64), np.empty(256, np.int64)
    for k in range(n):
        keys[k] = np.uint64(top[k])
    _argsort_keys(keys, order, spare, spare_keys, count)
    for k in range(n):
        spare[k] = top[order[k]]
    top[:] = spare
    c_sorted = np.empty(n)
    for k in range(n):
        c_sorted[k] = c[order[k]]
    c[:] = c_sorted
    best = math.inf
    for k in range(n):
        best = min(best, c[k])
    total = 0.0
    for k in range(n):
        w[k] = math.exp(-(c[k] - best) / (2.0 * var)) if math.isfinite(c[k]) else 0.0
        total += w[k]
    for k in range(n):
        w[k] /= total
    y = np.empty(m)
    for i in range(m):
        y[i] = clean[i]
    if tau > 0.0:   # the regression compares shapes: the data at the best entry's scale
        kb = 0
        for k in range(n):
            if c[k] < c[kb]:
                kb = k
        cs = 0.0
        ss = 0.0
        for i in range(m):
            sv = signals[top[kb], i]
            cs += y[i] * sv
            ss += sv * sv
        alpha = min(max(cs / max(ss, 1e-12), 1.0 - 3.0 * tau), 1.0 + 3.0 * tau)
        for i in range(m):
            y[i] /= alpha
    c2 = np.empty(n)
    best_fit = math.inf
    for k in range(n):
        c2[k] = c[k] + 2.0 * var * log_prior[top[k]] if prior_design else c[k]
        if math.isfinite(c2[k]):
            best_fit = min(best_fit, c2[k])
    reach = 0.0
    if n > 1:   # the q-th least of c2 (inf last)
        near = np.full(q + 1, math.inf)
        for k in range(n):
            x = c2[k] if not math.isnan(c2[k]) else math.inf
            if x < near[q]:
                j = q
                while j > 0 and near[j - 1] > x:
                    near[j] = near[j - 1]
                    j -= 1
                near[j] = x
        reach = near[q] - best_fit
        if not math.isfinite(reach):
            reach = 0.0
    width = 2.0 * max(var, reach / 2.0)
    w_fit = np.empty(n)
    total = 0.0
    for k in range(n):
        w_fit[k] = math.exp(-(c2[k] - best_fit) / width) if math.isfinite(c2[k]) else 0.0
        total += w_fit[k]
    for k in range(n):
        w_fit[k] /= total
    zy = np.zeros(r)
    for j in range(r):
        for i in range(m):
            zy[j] += (y[i] - mu[i]) * comps[j, i]
    d = r + 1
    a = np.zeros((d, d))
    b = np.zeros((d, n_p))
    dz = np.empty((n, r))
    x = np.empty(d)
    for k in range(n):
        x[0] = 1.0
        for j in range(r):
            dz[k, j] = z_entries[top[k], j] - zy[j]
            x[j + 1] = dz[k, j]
        wk = w_fit[k]
        for i in range(d):
            wx = wk * x[i]
            for j in range(i + 1):
                a[i, j] += wx * x[j]
            for p in range(n_p):
                b[i, p] += wx * values[top[k], p]
    for i in range(d):
        for j in range(i):
            a[j, i] = a[i, j]
        if i > 0:
            a[i, i] += ridge
    _solve_pivoted(a, b)
    for k in range(n):
        for p in range(n_p):
            t = values[top[k], p]
            for j in range(r):
                t -= dz[k, j] * b[j + 1, p]
            adj[p, k] = min(max(t, lo_t[p]), hi_t[p])
    w_alt = np.empty((2, n))   # the weights reweighted by exp(-design_log_prior), exp(+design_log_prior)
    made = np.zeros(2, np.bool_)
    for p in range(n_p):
        wp = w
        if reweight[p] != 0:
            side = 0 if reweight[p] < 0 else 1
            if not made[side]:
                total = 0.0
                for k in range(n):
                    w_alt[side, k] = w[k] * math.exp(reweight[p] * design_log_prior[top[k]])
                    total += w_alt[side, k]
                for k in range(n):
                    w_alt[side, k] /= total
                made[side] = True
            wp = w_alt[side]
        mean = 0.0
        second = 0.0
        for k in range(n):
            mean += wp[k] * adj[p, k]
            second += wp[k] * adj[p, k] * adj[p, k]
        slope2 = 0.0
        for j in range(r):
            slope2 += b[j + 1, p] * b[j + 1, p]
        var_out[p] = max(second - mean * mean, 0.0) + var * slope2
        tied[p] = False
        if median:
            point[p], tied[p] = _weighted_median(adj[p], wp, order, keys, spare, spare_keys, count)
        else:
            point[p] = mean


@njit(cache=True, parallel=True)
def posterior_moments(top, c, var, clean, tau, signals, values, z_entries, mu, comps, log_prior, design_log_prior,
                      prior_design, reweight, lo_t, hi_t, q, ridge, median, point, var_out, w, adj, tied):
    """posterior_voxel for every voxel v (top, c [V, n] re-ordered by entry in place; var, tau [V]; clean [V, M];
    point, var_out [V, P]; w [V, n], adj [V, P, n], tied [V, P])."""
    for v in prange(top.shape[0]):
        posterior_voxel(top[v], c[v], var[v], clean[v], tau[v], signals, values, z_entries, mu, comps, log_prior,
                        design_log_prior, prior_design, reweight, lo_t, hi_t, q, ridge, median, point[v], var_out[v],
                        w[v], adj[v], tied[v])


@njit(cache=True, parallel=True)
def nearest_mean(points, refs_t, values, k, scale, out):
    """out[v] = the mean of values [R, P] over the k rows of refs [R, P] nearest to points[v] [P] (squared
    distance of the coordinates divided by scale [P]; ties by row index); refs_t [P, R] = refs transposed, so
    that the distances to every row are formed a coordinate at a time (vectorised), then offered in row order."""
    n_p, n_r = refs_t.shape
    for v in prange(points.shape[0]):
        hc = np.empty(k)
        he = np.empty(k, np.int64)
        d2 = np.zeros(n_r)
        for p in range(n_p):
            x, sp = points[v, p], scale[p]
            for j in range(n_r):
                t = (x - refs_t[p, j]) / sp
                d2[j] += t * t
        size = 0
        for j in range(n_r):
            if size < k or d2[j] < hc[0]:
                size = heap_push(hc, he, size, k, d2[j], j)
        for p in range(out.shape[1]):
            acc = 0.0
            for t in range(k):
                acc += values[he[t], p]
            out[v, p] = acc / k


@njit(cache=True)
def _truncated_normal(mu, s, hi):
    """(mass, mean, variance) of N(mu, s²) truncated to [0, hi] (hi > 0), mass relative to the untruncated
    density's integral (1 - Φ(a) and Φ(b) as differences, as before issue #41: far in the lower tail the mass
    rounds to 0 and is held at 1e-300; tests/test_joint.py's quadrature cases with σ = 0.05 show what that
    costs). Where mu >= 0 and the Gaussian reaches past hi by more than 8.5 SDs, Φ(b) is 1 in double precision
    and φ(b) < 1e-16 beside a mass of at least 1/2, so neither is computed."""
    a, b = (0.0 - mu) / s, (hi - mu) / s
    if a < -5.0 and b > 5.0:   # the whole Gaussian inside [0, hi] (mass 1 to 6e-7)
        return 1.0, mu, s * s
    za = 0.5 * math.erfc(-a / math.sqrt(2.0))
    if b > 8.5 and a <= 0.0:   # mass >= 1/2: φ(b) < 1e-16 and Φ(b) = 1 change nothing at double precision
        zb, pb = 1.0, 0.0
    else:   # (mu < 0: the mass is a small difference, to which φ(b)/mass still contributes)
        # erfc(-b/√2) rounds to 2 exactly beyond b = 8.5 (1 - Φ(b) < 1e-17) and φ(b) to 0 beyond 38.6
        zb = 1.0 if b > 8.5 else 0.5 * math.erfc(-b / math.sqrt(2.0))
        pb = math.exp(-0.5 * b * b) / math.sqrt(2.0 * math.pi) if b < 38.6 else 0.0
    mass = zb - za
    if mass < 1e-300:   # all the mass beyond one end: the posterior of f sits at that end
        f = 0.0 if mu < 0 else hi
        return 1e-300, f, 0.0
    pa = math.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    mean = mu + s * (pa - pb) / mass
    var = s * s * (1.0 + (a * pa - b * pb) / mass - ((pa - pb) / mass) ** 2)
    return mass, min(max(mean, 0.0), hi), max(var, 0.0)


@njit(cache=True)
def truncated_exponential_log_density0(rate, hi):
    """log of the density at 0 of the truncated exponential e^{-rate·f} on [0, hi] (hi > 0; rate [1/unit f]
    of either sign, 0: flat), i.e. -log ∫_0^hi e^{-rate·f} df."""
    u = rate * hi
    if abs(u) < 1e-8:
        return -math.log(hi)
    if u > 0:
        return math.log(rate) - math.log1p(-math.exp(-u))
    return math.log(-rate) + u - math.log1p(-math.exp(u))


@njit(cache=True)
def truncated_exponential_moments(rate, hi):
    """(E[f], E[f²]) of the truncated exponential e^{-rate·f} on [0, hi] (rate of either sign, 0: flat)."""
    u = rate * hi
    if abs(u) < 1e-4:   # flat, first order in u
        return hi * (0.5 - u / 12.0), hi * hi * (1.0 / 3.0 - u / 12.0)
    em1 = math.expm1(u)
    mean = 1.0 / rate - hi / em1
    second = 2.0 / (rate * rate) - (hi * hi + 2.0 * hi / rate) / em1
    return min(max(mean, 0.0), hi), min(max(second, 0.0), hi * hi)


#: Pairs whose unconstrained log weight is this far below the best are left out of the joint posterior.
JOINT_LOG_WEIGHT_SPAN = 12.0


@njit(cache=True, parallel=True)
def joint_pair_moments(y, sig2, tissue, flow_t, flow_sq, fv_max, groups, kappa, te_weight, w_flow, g_flow, f_moments,
                       log_w, p_zero=0.0, fv_rate=0.0):
    """Posterior over (tissue candidate t, flow entry v, vascular fraction f) of the joint model
    y = (1 - f) t + f v + Gaussian noise (sig2 [V] its variance), flat priors, f in [0, fv_max]
    marginalised analytically (Gaussian in f for each pair, truncated). tissue [V, Nt, M] the voxel's
    tissue candidates, flow_t [M, Kf] the flow signals transposed, flow_sq [Kf] = |v|². Writes, per
    voxel: w_flow [V, Kf] the marginal posterior of the flow entries, g_flow [V, Kf] Σ_t w_tv E[f | t, v],
    f_moments [V, 4] E[f], E[f²], P(f = 0), log Bayes factor of a vascular signal; log_w [V, Nt, Kf] is work space.
    The Laplace factor and the truncation are evaluated only for pairs whose profile weight is within
    JOINT_LOG_WEIGHT_SPAN of the best (the unconstrained profile: a pair whose f lies far outside [0, fv_max]
    looks better than it is; tests/test_joint.py's quadrature cases with σ = 0.05).

    Normalisation noise: each measurement group g (groups [M], 0..G-1: the TE groups, each divided by its
    own noisy b = 0) shares one scale error of SD τ_g, i.e. noise covariance σ²I + τ_g² y_g y_gᵀ (the
    signal's own shape stands in for the model's, as τ << 1); kappa [V, G] = τ_g² / (σ² + τ_g² |y_g|²)
    (Sherman-Morrison: the misfit loses κ_g <r_g, y_g>² per group; 0 without normalisation noise).

    Relaxation: te_weight [M] a_k = e^{-TE_k (1/T2_blood - 1/T2_tissue)} (1 for equal T2s) makes the model
    y = t + f a∘(v - t), first order in f of ((1 - f) t + f a v) / (1 - f + f a), with f the vascular
    volume fraction; flow_sq [Kf] is then Σ_k a_k² v_k².

    Prior of f: a point mass p_zero at f = 0 (no vascular signal: the voxel's evidence is then the tissue
    candidate's alone) and (1 - p_zero) on (0, fv_max] with density ∝ e^{-fv_rate·f} (truncated exponential;
    fv_rate = 0: flat; a Gaussian in f times it is a Gaussian of shifted mean, so the marginalisation stays
    exact); with p_zero = 0 the slab alone. Both parts enter with their exact marginal likelihoods, so a voxel
    whose data show no vascular signal is fitted as tissue only. w_flow is the flow entries' posterior given f > 0
    (the blood's, where there is
    any); f_moments and g_flow are over the whole prior."""
    n_v, n_t, m = tissue.shape
    n_f = flow_t.shape[1]
    n_g = kappa.shape[1]
    unit = np.all(te_weight == 1.0)
    for i in prange(n_v):
        tv = np.empty((n_t, n_f))
        joint_pair_voxel(y[i], sig2[i], tissue[i], flow_t, flow_sq, fv_max, groups, kappa[i], te_weight, unit, p_zero,
                         fv_rate, w_flow[i], g_flow[i], f_moments[i], log_w[i], tv, tv if unit else np.empty((n_t, n_f)),
                         np.empty((n_t, n_f)), np.empty(n_f), np.empty((n_g, n_f)), np.empty(n_g), np.empty(n_g),
                         np.empty(n_g), np.empty(n_t))


@njit(cache=True)
def _joint_pair_profile(yi, s2, ti, flow_t, flow_sq, groups, kappa, aw, unit, shift, log_p0, lw, tv, tv2, bb, yv, yvg,
                        yyg, ytg, ytag, spike):
    """joint_pair_voxel's first pass: per pair (t, v) lw = the profile log weight (its least misfit over f
    unconstrained, -a/2σ² + b²/2σ²c), tv = c = |a∘(v - t)|² (less the common-mode part), bb = b = <y - t,
    a∘(v - t)> - λσ² (shift); spike [Nt] the log weight of (t, f = 0) of unit prior mass. Returns the largest
    of the pairs' lw and the spikes' spike + log_p0."""
    n_t, m = ti.shape
    n_f = flow_t.shape[1]
    n_g = kappa.shape[0]
    for e in range(n_f):   # <y, a∘v> [Kf]; <t, a∘v> [Nt, Kf], later |a∘(v - t)|²; <t, a²∘v> (read before tv is overwritten)
        yv[e] = 0.0
        for t in range(n_t):
            tv[t, e] = 0.0
            tv2[t, e] = 0.0
    for k in range(m):
        ya = yi[k] * aw[k]
        for e in range(n_f):
            yv[e] += ya * flow_t[k, e]
        for t in range(n_t):
            ta = ti[t, k] * aw[k]
            ta2 = ti[t, k] * (aw[k] * aw[k])
            if unit:
                for e in range(n_f):
                    tv[t, e] += ta * flow_t[k, e]
            else:
                for e in range(n_f):
                    tv[t, e] += ta * flow_t[k, e]
                    tv2[t, e] += ta2 * flow_t[k, e]
    for g in range(n_g):
        yyg[g] = 0.0
        for e in range(n_f):
            yvg[g, e] = 0.0   # <y_g, a∘v_g>
    for k in range(m):
        yyg[groups[k]] += yi[k] * yi[k]
        for e in range(n_f):
            yvg[groups[k], e] += yi[k] * aw[k] * flow_t[k, e]
    best = -math.inf
    for t in range(n_t):
        spike[t] = -math.inf   # log weight of (t, f = 0)
        tt_a = 0.0
        tt_a2 = 0.0
        a = 0.0
        yt_a = 0.0
        for g in range(n_g):
            ytg[g] = 0.0
            ytag[g] = 0.0
        for k in range(m):
            tt_a += aw[k] * ti[t, k] * ti[t, k]
            tt_a2 += aw[k] * aw[k] * ti[t, k] * ti[t, k]
            yt_a += aw[k] * yi[k] * ti[t, k]
            ytg[groups[k]] += yi[k] * ti[t, k]
            ytag[groups[k]] += aw[k] * yi[k] * ti[t, k]
            d = yi[k] - ti[t, k]
            a += d * d
        for g in range(n_g):   # common-mode part of the misfit at f = 0
            a -= kappa[g] * (yyg[g] - ytg[g]) ** 2
        spike[t] = math.log(n_f) - a / (2.0 * s2)
        if spike[t] + log_p0 > best:
            best = spike[t] + log_p0
        # per pair b (into bb) and c (into tv), loop by loop over the entries so that each one vectorises
        for e in range(n_f):
            tve = tv[t, e]
            tv2e = tv2[t, e]   # tv2 is tv when unit: both read before tv is written
            bb[t, e] = yv[e] - yt_a - tve + tt_a - shift
            tv[t, e] = flow_sq[e] - 2.0 * tv2e + tt_a2
        for g in range(n_g):
            kp = kappa[g] * (yyg[g] - ytg[g])
            kg = kappa[g]
            tag = ytag[g]
            for e in range(n_f):
                qg = yvg[g, e] - tag
                bb[t, e] -= kp * qg
                tv[t, e] -= kg * qg * qg
        for e in range(n_f):
            c = tv[t, e]
            b = bb[t, e]
            lw[t, e] = (-a + (b * b / c if c > 1e-15 else 0.0)) / (2.0 * s2)
        for e in range(n_f):
            if lw[t, e] > best:
                best = lw[t, e]
    return best


@njit(cache=True)
def _joint_pair_prior(p_zero, fv_rate, fv_max, s2):
    """(log_mass, log_slab, shift, log_p0): the fV prior's terms of joint_pair_voxel. Slab: log (1 - p0), and
    log (1 - p0) sqrt(2π)/Z per pair (Z = ∫_0^fv_max e^{-λf} df; 0 where fv_max = 0, the slab then the point
    f = 0 itself); shift = λσ², by which e^{-λf} moves each pair's Gaussian in f (over c); log p0 of the spike
    (-inf without one), each spike spanning the n_f pairs of its tissue candidate."""
    log_mass = math.log(max(1.0 - p_zero, 1e-300))
    log_slab = (log_mass + 0.5 * math.log(2.0 * math.pi) + truncated_exponential_log_density0(fv_rate, fv_max)
                if fv_max > 0 else 0.0)
    log_p0 = math.log(p_zero) if p_zero > 0 else -math.inf
    return log_mass, log_slab, fv_rate * s2, log_p0


@njit(cache=True)
def joint_pair_voxel_log(yi, s2, ti, flow_t, flow_sq, fv_max, groups, kappa, aw, unit, p_zero, fv_rate, w_flow,
                         g_flow, f_moments, lw, tv, tv2, bb, yv, yvg, yyg, ytg, ytag, spike):
    """joint_pair_voxel with every weight in logarithms: its fallback where the weights would underflow (same
    arguments)."""
    n_t = ti.shape[0]
    n_f = flow_t.shape[1]
    log_mass, log_slab, shift, log_p0 = _joint_pair_prior(p_zero, fv_rate, fv_max, s2)
    best = _joint_pair_profile(yi, s2, ti, flow_t, flow_sq, groups, kappa, aw, unit, shift, log_p0, lw, tv, tv2, bb,
                               yv, yvg, yyg, ytg, ytag, spike)
    top = -math.inf
    for t in range(n_t):
        for e in range(n_f):
            if lw[t, e] < best - JOINT_LOG_WEIGHT_SPAN:
                lw[t, e] = -math.inf
                continue
            c = tv[t, e]
            if c > 1e-15:
                sd = math.sqrt(s2 / c)
                factor, mean, var = _truncated_normal(bb[t, e] / c, sd, fv_max)
                lw[t, e] += math.log(sd) + math.log(factor) + log_slab
            else:   # v == t: f does not change the signal, its posterior is the prior (the slab)
                mean, var = truncated_exponential_moments(fv_rate, fv_max)
                var -= mean * mean
                lw[t, e] += log_mass
            tv[t, e] = mean                  # |v - t|² no longer needed: keep E[f | t, v] ...
            bb[t, e] = var + mean * mean    # ... and E[f² | t, v]
            if lw[t, e] > top:
                top = lw[t, e]
    for t in range(n_t):
        if spike[t] + log_p0 > top:
            top = spike[t] + log_p0
    floor_w = top - JOINT_LOG_WEIGHT_SPAN
    for t in range(n_t):
        for e in range(n_f):
            lw[t, e] = math.exp(lw[t, e] - top) if lw[t, e] >= floor_w else 0.0
    _joint_pair_finish(lw, tv, bb, spike, log_p0, top, math.exp(-JOINT_LOG_WEIGHT_SPAN), log_mass, w_flow, g_flow,
                       f_moments)


@njit(cache=True)
def _joint_pair_finish(lw, tv, bb, spike, log_p0, ref, cut, log_mass, w_flow, g_flow, f_moments):
    """joint_pair_voxel's last pass: lw [Nt, Kf] the pairs' posterior weights relative to e^ref (tv, bb: E[f | t, v],
    E[f² | t, v]), spike [Nt] the spikes' log weights (prior log_p0 apart): the pairs and spikes of weight under
    cut left out, the flow entries' weights w_flow, g_flow [Kf] and f_moments [4] (joint_pair_moments)."""
    n_t, n_f = lw.shape
    total = 0.0
    ef = 0.0
    ef2 = 0.0
    for e in range(n_f):
        w_flow[e] = 0.0
        g_flow[e] = 0.0
    for t in range(n_t):
        for e in range(n_f):
            w = lw[t, e]
            if w < cut:
                continue
            total += w
            w_flow[e] += w
            g_flow[e] += w * tv[t, e]
            ef += w * tv[t, e]
            ef2 += w * bb[t, e]
    slab_total = total
    smax = -math.inf
    for t in range(n_t):
        ws = math.exp(spike[t] + log_p0 - ref)
        if ws >= cut:
            total += ws
        if spike[t] > smax:
            smax = spike[t]
    f_moments[2] = 1.0 - slab_total / total   # P(f = 0 | y)
    s_sum = 0.0
    for t in range(n_t):
        s_sum += math.exp(spike[t] - smax)
    # log Bayes factor (slab against spike, each of unit prior mass): exact where P(f = 0 | y) cancels
    f_moments[3] = (ref + math.log(slab_total) - log_mass - smax - math.log(s_sum) if slab_total > 0
                    else -math.inf)
    for e in range(n_f):   # the flow entries given a vascular signal (f > 0); the prior when none is left
        w_flow[e] = w_flow[e] / slab_total if slab_total > 0 else 1.0 / n_f
        g_flow[e] /= total
    f_moments[0] = ef / total
    f_moments[1] = ef2 / total


@njit(cache=True)
def joint_pair_voxel(yi, s2, ti, flow_t, flow_sq, fv_max, groups, kappa, aw, unit, p_zero, fv_rate, w_flow, g_flow,
                     f_moments, lw, tv, tv2, bb, yv, yvg, yyg, ytg, ytag, spike):
    """joint_pair_moments for one voxel (yi [M], s2 = σ², ti [Nt, M] its tissue candidates, kappa [G], aw [M]
    the relaxation weights, unit: all aw = 1, fv_rate the slab's exponential rate), into w_flow, g_flow [Kf] and
    f_moments [4]; lw, tv, tv2, bb [Nt, Kf], yv [Kf], yvg [G, Kf], yyg, ytg, ytag [G], spike [Nt] are work space
    (tv2 may be tv when unit). The pairs' weights are formed as products relative to the largest profile weight
    (joint_pair_voxel_log where they would underflow)."""
    n_t = ti.shape[0]
    n_f = flow_t.shape[1]
    log_mass, log_slab, shift, log_p0 = _joint_pair_prior(p_zero, fv_rate, fv_max, s2)
    best = _joint_pair_profile(yi, s2, ti, flow_t, flow_sq, groups, kappa, aw, unit, shift, log_p0, lw, tv, tv2, bb,
                               yv, yvg, yyg, ytg, ytag, spike)
    # the pairs' weights relative to e^best, as products (no logarithm per pair): e^{q - best} · sd · mass · e^{log_slab}
    slab_scale = math.exp(log_slab)
    mass_scale = math.exp(log_mass)
    floor_q = best - JOINT_LOG_WEIGHT_SPAN
    wtop = 0.0
    for t in range(n_t):
        for e in range(n_f):
            q = lw[t, e]
            if q < floor_q:
                lw[t, e] = 0.0
                continue
            c = tv[t, e]
            if c > 1e-15:
                sd = math.sqrt(s2 / c)
                factor, mean, var = _truncated_normal(bb[t, e] / c, sd, fv_max)
                w = math.exp(q - best) * (sd * factor * slab_scale)
            else:   # v == t: f does not change the signal, its posterior is the prior (the slab)
                mean, var = truncated_exponential_moments(fv_rate, fv_max)
                var -= mean * mean
                w = math.exp(q - best) * mass_scale
            lw[t, e] = w
            tv[t, e] = mean                  # |v - t|² no longer needed: keep E[f | t, v] ...
            bb[t, e] = var + mean * mean    # ... and E[f² | t, v]
            if w > wtop:
                wtop = w
    for t in range(n_t):
        ws = math.exp(spike[t] + log_p0 - best)
        if ws > wtop:
            wtop = ws
    if not wtop > 1e-250:   # every weight near underflow (e.g. no spike and masses of ~1e-300): in logarithms
        joint_pair_voxel_log(yi, s2, ti, flow_t, flow_sq, fv_max, groups, kappa, aw, unit, p_zero, fv_rate, w_flow,
                             g_flow, f_moments, lw, tv, tv2, bb, yv, yvg, yyg, ytg, ytag, spike)
        return
    _joint_pair_finish(lw, tv, bb, spike, log_p0, best, wtop * math.exp(-JOINT_LOG_WEIGHT_SPAN), log_mass, w_flow,
                       g_flow, f_moments)


@njit(cache=True, inline="always")
def joint_misfit(yy, yt, yv, signals_sq, tissue_proto, pair_sq, e, fv_max):
    """min over the flow prototypes r and f in [0, fv_max] of |y - (1 - f) t_e - f v_r|² for one voxel, from
    yy = |y|², yt = <y, t_e>, yv [R] = <y, v_r> and the voxel-independent Gram terms of joint_profile_top."""
    tt = signals_sq[e]
    a = yy - 2.0 * yt + tt
    q_best = a
    for r in range(yv.shape[0]):
        c = pair_sq[e, r]
        if c <= 1e-15:
            continue
        b = yv[r] - yt - tissue_proto[e, r] + tt
        f = min(max(b / c, 0.0), fv_max)
        q = a - 2.0 * f * b + f * f * c
        if q < q_best:
            q_best = q
    return q_best


@njit(cache=True, parallel=True)
def joint_profile_top(y, yt_all, signals_sq, tissue_proto, pair_sq, proto, fv_max, top):
    """The k = top.shape[1] tissue entries of least joint misfit (joint_misfit: min over the flow prototypes
    proto [R, M] and f in [0, fv_max] of |y - (1 - f) t - f v|²; ties by entry index, heap order) for every
    voxel y [V, M] (yt_all [V, E] = <y, t> of every entry, a matrix product done beforehand; signals_sq [E] =
    |t|², tissue_proto [E, R] = <t, v_r>, pair_sq [E, R] = |v_r - t|²). Voxel-independent Gram terms make it
    O(E·R) per voxel after the product."""
    n_v, m = y.shape
    n_e = yt_all.shape[1]
    n_r = proto.shape[0]
    k = top.shape[1]
    for i in prange(n_v):
        yy = 0.0
        for j in range(m):
            yy += y[i, j] * y[i, j]
        yv = np.zeros(n_r)
        for r in range(n_r):
            for j in range(m):
                yv[r] += y[i, j] * proto[r, j]
        hc = np.empty(k)
        size = 0
        for e in range(n_e):
            q = joint_misfit(yy, yt_all[i, e], yv, signals_sq, tissue_proto, pair_sq, e, fv_max)
            if size < k or q < hc[0]:
                size = heap_push(hc, top[i], size, k, q, e)


@njit(cache=True)
def _ball_key(yi, centre, w, ww, radius, fv_max):
    """A lower bound on sqrt(joint misfit) of every tissue entry t within radius of centre [M] (w [R, M] =
    v_r - centre, ww [R] = |w_r|²): for |t - c| <= ρ, |y - (1 - f) t - f v| >= |(y - c) - f (v - c)| - ρ for
    every f in [0, 1], so the centre's least |(y - c) - f w_r| over the prototypes and f in [0, fv_max], less ρ
    (rounding allowed for)."""
    m = yi.shape[0]
    dd = 0.0
    for j in range(m):
        dj = yi[j] - centre[j]
        dd += dj * dj
    low = dd * (1.0 - 1e-12)
    for r in range(w.shape[0]):
        if ww[r] <= 1e-15:
            continue
        b = 0.0
        for j in range(m):
            b += (yi[j] - centre[j]) * w[r, j]
        f = min(max(b / ww[r], 0.0), fv_max)
        q = dd - 2.0 * f * b + f * f * ww[r] - 1e-12 * (dd + 2.0 * abs(b) + ww[r]) - 1e-15
        if q < low:
            low = q
    return max(math.sqrt(max(low, 0.0)) * (1.0 - 1e-12) - radius * (1.0 + 1e-12) - 1e-12, 0.0)


@njit(cache=True)
def _push_min(key, heap, size, item):
    """Add item to the min-heap heap[:size] (indices into key, least key first); returns the new size."""
    j = size
    while j > 0:
        parent = (j - 1) // 2
        if key[heap[parent]] <= key[item]:
            break
        heap[j] = heap[parent]
        j = parent
    heap[j] = item
    return size + 1


@njit(cache=True)
def joint_profile_voxel(yi, rows, perm, leaf_start, sq_rows, proto_rows, pair_rows, centres, radii, w_leaf, ww_leaf,
                        group_start, g_centres, g_radii, g_w, g_ww, proto, fv_max, k, key, heap, misfit, cand, hc, he,
                        yv, top):
    """joint_profile_top's k tissue entries of least joint misfit for one voxel yi [M], visiting only the leaves
    of a tree over the entries that can hold one of them: rows [E, M] the tissue signals in leaf order (entry
    perm[r] in row r; leaf l the rows leaf_start[l]:leaf_start[l + 1]) with their Gram terms sq_rows [E],
    proto_rows, pair_rows [E, R] (joint_misfit's); centres [L, M], radii [L] each leaf's ball, w_leaf [L, R, M]
    = v_r - centre, ww_leaf [L, R] = |v_r - centre|²; the same for groups of consecutive leaves (group g the
    leaves group_start[g]:group_start[g + 1]; g_centres [G, M], g_radii, g_w, g_ww), whose leaves are only
    bounded where the group's ball can hold a candidate (_ball_key). Balls are taken by least bound, each
    member's joint misfit computed (<y, t> in the thread), until no ball left can reach the k-th least; the
    members within it are then offered in increasing entry order (heap_push: ties at the k-th keep the lower
    indices, as joint_profile_top's scan). key, heap [L + G], misfit, cand [E], hc, he [k], yv [R] are work
    space; the entries go to top [k] (heap order)."""
    m = yi.shape[0]
    n_leaves = radii.shape[0]
    n_r = proto.shape[0]
    yy = 0.0
    for j in range(m):
        yy += yi[j] * yi[j]
    for r in range(n_r):
        yv[r] = 0.0
        for j in range(m):
            yv[r] += yi[j] * proto[r, j]
    err = 1e-11 * (yy + m)   # rounding of a joint misfit computed from Gram terms (|y|², |t|², <y, t> <= ~M)
    left = 0
    for g in range(g_radii.shape[0]):   # items: leaves 0..L-1, groups L..L+G-1
        key[n_leaves + g] = _ball_key(yi, g_centres[g], g_w[g], g_ww[g], g_radii[g], fv_max)
        left = _push_min(key, heap, left, n_leaves + g)
    size = 0
    n_visited = 0
    reach = math.inf   # no ball left can hold an entry whose computed misfit is under the k-th least so far
    while left > 0:
        item = heap[0]
        if size == k and key[item] > reach:
            break
        left -= 1
        heap[0] = heap[left]
        _sift_down_min(key, heap, left, 0)
        if item >= n_leaves:   # a group: bound its leaves
            g = item - n_leaves
            for lf in range(group_start[g], group_start[g + 1]):
                key[lf] = _ball_key(yi, centres[lf], w_leaf[lf], ww_leaf[lf], radii[lf], fv_max)
                if size < k or key[lf] <= reach:
                    left = _push_min(key, heap, left, lf)
            continue
        for row in range(leaf_start[item], leaf_start[item + 1]):
            yt = 0.0
            for j in range(m):
                yt += yi[j] * rows[row, j]
            q = joint_misfit(yy, yt, yv, sq_rows, proto_rows, pair_rows, row, fv_max)
            misfit[n_visited] = q
            cand[n_visited] = perm[row]
            n_visited += 1
            if size < k or q < hc[0]:
                size = heap_push(hc, he, size, k, q, row)   # the k-th least value (any order gives it)
        if size == k:
            reach = math.sqrt(hc[0] + err) * (1.0 + 1e-12) + 1e-12
    cut = hc[0]
    count = 0
    for j in range(n_visited):   # the members at or under the k-th least, in entry order
        if misfit[j] <= cut:
            heap[count] = j   # (heap is free again: work space of the right size when E >= L + G)
            count += 1
    order = np.argsort(cand[heap[:count]])
    size = 0
    for c in range(count):
        j = heap[order[c]]
        if size < k or misfit[j] < hc[0]:
            size = heap_push(hc, top, size, k, misfit[j], cand[j])


@njit(cache=True, parallel=True)
def joint_profile_leaves(y, rows, perm, leaf_start, sq_rows, proto_rows, pair_rows, centres, radii, w_leaf, ww_leaf,
                         group_start, g_centres, g_radii, g_w, g_ww, proto, fv_max, parts, top):
    """joint_profile_top's candidates (the same entries, from the same misfits but <y, t> summed in the thread)
    for every voxel y [V, M] by joint_profile_voxel, the voxels split into ``parts`` ranges (one per thread)."""
    n_v = y.shape[0]
    n_e = rows.shape[0]
    n_items = radii.shape[0] + g_radii.shape[0]
    k = top.shape[1]
    parts = max(1, min(n_v, parts))
    for part in prange(parts):
        hc = np.empty(k)
        he = np.empty(k, np.int64)
        key = np.empty(n_items)
        heap = np.empty(max(n_items, n_e), np.int64)
        misfit = np.empty(n_e)
        cand = np.empty(n_e, np.int64)
        yv = np.empty(proto.shape[0])
        for v in range(part * n_v // parts, (part + 1) * n_v // parts):
            joint_profile_voxel(y[v], rows, perm, leaf_start, sq_rows, proto_rows, pair_rows, centres, radii, w_leaf,
                                ww_leaf, group_start, g_centres, g_radii, g_w, g_ww, proto, fv_max, k, key, heap,
                                misfit, cand, hc, he, yv, top[v])
