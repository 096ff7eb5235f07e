"""Optional CUDA path of the dictionary fit (numba.cuda; ``pip install 'dmrimc-bids[gpu]'``).

Same API as the CPU drivers of kernels.py: ``grid_search`` and ``refine`` (the ML fit), ``select_smallest``
and ``entry_costs`` (the posterior), ``joint_profile_top`` and ``joint_pair_moments`` (the joint fit);
dictfit._backend picks this module when ``device`` is 'gpu', or 'auto' where dictfit.AUTO_USES_GPU says
so, and a CUDA GPU is present. One GPU thread handles one voxel (the posterior's cost matrix: one entry). The
per-voxel routines are the very source of kernels.py: each ``py_func`` is re-compiled as a CUDA
device function in a namespace where its callees are the device versions, so the CPU and GPU paths
cannot drift apart. Results agree with the CPU to floating-point rounding (fused multiply-adds), not
bit for bit. With ``NUMBA_ENABLE_CUDASIM=1`` the kernels run in numba's simulator (slow; used by the
tests on machines without a GPU).
"""

from __future__ import annotations

import functools
import math
import types

import numpy as np
from numba import float64

from ..cudacompat import import_numba_cuda
from . import kernels

cuda = import_numba_cuda()

#: Largest number of fitted parameters / measurements a GPU thread holds in local memory.
MAX_PARAMS, MAX_MEASUREMENTS = 8, 256
_DEVICE_ROUTINES = ("log_i0", "bessel_ratio", "tps_eval", "data_cost", "penalty", "solve_spd", "lm_voxel",
                    "offset_residual")
#: Threads of a posterior-cost block: (entries, voxels); entries vary fastest, so reads of signals_t coalesce.
COST_BLOCK = (64, 4)


def available() -> bool:
    """True when numba sees a usable CUDA GPU (or the simulator is on)."""
    try:
        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001 - no driver, no toolkit, ...: no GPU
        return False


def _retarget(names) -> dict:
    """Device versions of the kernels.py routines ``names``, in a namespace where each one's callees among
    them are the device versions too (the module constants they read included)."""
    namespace = {"math": math, "np": np, **{k: getattr(kernels, k) for k in dir(kernels) if k.isupper()}}
    for name in names:
        py = getattr(kernels, name).py_func
        namespace[name] = cuda.jit(device=True)(types.FunctionType(py.__code__, namespace, name, py.__defaults__,
                                                                   py.__closure__))
    return namespace


@functools.lru_cache(maxsize=1)
def _compiled():
    namespace = _retarget(_DEVICE_ROUTINES)
    lm_voxel = namespace["lm_voxel"]
    md, mm = MAX_PARAMS, MAX_MEASUREMENTS

    @cuda.jit
    def grid_kernel(y, w, flo2, signals_t, entry_pen, best, best_cost):
        v = cuda.grid(1)
        if v >= y.shape[0]:
            return
        m, n_e = signals_t.shape
        b, bc = -1, math.inf
        for e in range(n_e):
            c = 0.0
            for i in range(m):
                sv = signals_t[i, e]
                r = y[v, i] - math.sqrt(sv * sv + flo2[v, i])
                c += w[i] * r * r
            c += entry_pen[e]
            if c < bc:
                bc, b = c, e
        best[v] = b
        best_cost[v] = bc

    @cuda.jit
    def refine_kernel(y, w, sig2, flo2, rician, z, anchor, centres, weights, poly, origin, box_lo, box_hi,
                      uscale, reg_norm, reg_w, max_iter, cost, iters, status):
        v = cuda.grid(1)
        if v >= y.shape[0]:
            return
        m, d = y.shape[1], z.shape[1]
        s_f = cuda.local.array(mm, float64)
        st_f = cuda.local.array(mm, float64)
        jt_f = cuda.local.array((md, mm), float64)
        jtt_f = cuda.local.array((md, mm), float64)
        vec_f = cuda.local.array((5, md), float64)
        mat_f = cuda.local.array((2, md, md), float64)
        a = anchor[v]
        c, it, stat = lm_voxel(y[v], w, sig2[v], flo2[v], rician[v], z[v], a, centres, weights, poly, origin,
                               box_lo[a], box_hi[a], uscale, reg_norm, reg_w, max_iter, s_f[:m], jt_f[:d, :m],
                               st_f[:m], jtt_f[:d, :m], vec_f[:, :d], mat_f[:, :d, :d])
        cost[v] = c
        iters[v] += it
        status[v] = stat

    return grid_kernel, refine_kernel, namespace


@functools.lru_cache(maxsize=1)
def _cost_kernel():
    """The posterior's likelihood kernel: cost[v, e] for one voxel and entry per thread."""
    offset_residual = _compiled()[2]["offset_residual"]

    @cuda.jit
    def cost_kernel(y, flo2, signals_t, cost):
        e, v = cuda.grid(2)
        if v >= y.shape[0] or e >= signals_t.shape[1]:
            return
        c = 0.0
        for i in range(y.shape[1]):
            r = offset_residual(y[v, i], signals_t[i, e], flo2[v, i])
            c += r * r
        cost[v, e] = c

    return cost_kernel


def _launch(kernel, n, *args, outputs=()):
    """Run kernel over n voxels (128 threads a block); copy the arrays named by index in outputs back."""
    dev = [cuda.to_device(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in args]
    threads = 128
    kernel[(n + threads - 1) // threads, threads](*dev)
    for i in outputs:
        dev[i].copy_to_host(args[i])


def grid_search(y, w, flo2, signals_t, entry_pen, best, best_cost):
    """GPU kernels.grid_search (same arguments; best and best_cost are filled)."""
    _launch(_compiled()[0], len(y), y, w, flo2, signals_t, entry_pen, best, best_cost, outputs=(5, 6))


def refine(y, w, sig2, flo2, rician, z, anchor, centres, weights, poly, origin, box_lo, box_hi, uscale,
           reg_norm, reg_w, max_iter, cost, iters, status):
    """GPU kernels.refine (same arguments; z, cost, iters and status are updated)."""
    if z.shape[1] > MAX_PARAMS or y.shape[1] > MAX_MEASUREMENTS:
        return kernels.refine(y, w, sig2, flo2, rician, z, anchor, centres, weights, poly, origin, box_lo,
                              box_hi, uscale, reg_norm, reg_w, max_iter, cost, iters, status)
    _launch(_compiled()[1], len(y), y, w, sig2, flo2, np.asarray(rician, np.bool_), z, anchor, centres, weights,
            poly, origin, box_lo, box_hi, uscale, np.int64(reg_norm), np.float64(reg_w), np.int64(max_iter),
            cost, iters, status, outputs=(5, 17, 18, 19))


class _Resident:
    """Host arrays copied to the device once and reused by every batch of voxels (by identity; the host array
    is held, so its id cannot be reused while it is resident). The MAX_ARRAYS latest stay."""
    MAX_ARRAYS = 16
    arrays: dict = {}

    @classmethod
    def of(cls, a):
        key = id(a)
        if key not in cls.arrays or cls.arrays[key][0] is not a:
            while len(cls.arrays) >= cls.MAX_ARRAYS:
                cls.arrays.pop(next(iter(cls.arrays)))
            cls.arrays[key] = (a, cuda.to_device(np.ascontiguousarray(a)))
        return cls.arrays[key][1]


def entry_costs(y, flo2, signals_t, cost):
    """GPU kernels.entry_costs (same arguments; cost [V, E] is filled): one thread per voxel and entry."""
    d_y, d_f = cuda.to_device(np.ascontiguousarray(y)), cuda.to_device(np.ascontiguousarray(flo2))
    d_cost = cuda.device_array(cost.shape, np.float64)
    bx, by = COST_BLOCK
    grid = ((signals_t.shape[1] + bx - 1) // bx, (y.shape[0] + by - 1) // by)
    _cost_kernel()[grid, COST_BLOCK](d_y, d_f, _Resident.of(signals_t), d_cost)
    d_cost.copy_to_host(cost)


#: Most retained entries a selection thread holds (posterior.N_ADJUST is 256); more go to the CPU.
MAX_KEEP = 512


@functools.lru_cache(maxsize=1)
def _select_kernel():
    """kernels.select_smallest on the device, one thread per voxel: the very source of kernels.select_voxel
    (the likelihood of every entry and a heap of the n least), so no [V, E] cost matrix is formed."""
    namespace = _retarget(("offset_residual", "likelihood_cost", "_above", "heap_push", "_noise_var", "select_voxel"))
    select_voxel, keep = namespace["select_voxel"], MAX_KEEP
    from numba import int64

    @cuda.jit
    def select_kernel(y, flo2, signals_t, clean, kappa, log_prior, var, use_prior, top, c_top, rss):
        v = cuda.grid(1)
        if v >= y.shape[0]:
            return
        n = top.shape[1]
        hc = cuda.local.array(keep, float64)
        he = cuda.local.array(keep, int64)
        rss[v] = select_voxel(y[v], flo2[v], signals_t, clean[v], kappa[v], log_prior, var[v], use_prior, n, hc, he)
        for j in range(n):
            top[v, j] = he[j]
            c_top[v, j] = hc[j]

    return select_kernel


def select_smallest(y, flo2, signals_t, clean, kappa, log_prior, var, use_prior, top, c_top, rss) -> None:
    """GPU kernels.select_smallest (same arguments; top, c_top and rss are filled). n = top.shape[1] at most
    MAX_KEEP (posterior.py checks)."""
    args = [cuda.to_device(np.ascontiguousarray(a, np.float64)) for a in (y, flo2)]
    args += [_Resident.of(signals_t)]
    args += [cuda.to_device(np.ascontiguousarray(a, np.float64)) for a in (clean, kappa, log_prior, var)]
    outs = [cuda.device_array_like(a) for a in (top, c_top, rss)]
    threads = 128
    _select_kernel()[(len(y) + threads - 1) // threads, threads](*args, bool(use_prior), *outs)
    for d, h in zip(outs, (top, c_top, rss)):
        d.copy_to_host(h)


#: Most tissue candidates and flow prototypes a joint-fit thread holds (joint.N_TISSUE_CANDIDATES is 16,
#: joint.FLOW_PROTOTYPES 4).
MAX_CANDIDATES, MAX_PROTOTYPES = 64, 16


@functools.lru_cache(maxsize=1)
def _joint_kernels():
    """The joint fit's vascular steps on the device, one thread per voxel: the tissue candidates
    (kernels.joint_misfit and heap_push, <y, t> computed in the thread) and the pair posterior
    (kernels.joint_pair_voxel, its work space in device memory)."""
    ns = _retarget(("_above", "heap_push", "joint_misfit", "_truncated_normal", "truncated_exponential_log_density0",
                    "truncated_exponential_moments", "_joint_pair_prior", "_joint_pair_profile", "_joint_pair_finish",
                    "joint_pair_voxel_log", "joint_pair_voxel"))
    joint_misfit, heap_push, pair_voxel = ns["joint_misfit"], ns["heap_push"], ns["joint_pair_voxel"]
    n_cand, n_proto = MAX_CANDIDATES, MAX_PROTOTYPES

    @cuda.jit
    def profile_kernel(y, tissue_t, signals_sq, tissue_proto, pair_sq, proto, fv_max, top):
        i = cuda.grid(1)
        if i >= y.shape[0]:
            return
        m, n_e = tissue_t.shape
        k = top.shape[1]
        yv = cuda.local.array(n_proto, float64)
        hc = cuda.local.array(n_cand, float64)
        yy = 0.0
        for j in range(m):
            yy += y[i, j] * y[i, j]
        for r in range(proto.shape[0]):
            yv[r] = 0.0
            for j in range(m):
                yv[r] += y[i, j] * proto[r, j]
        size = 0
        for e in range(n_e):
            yt = 0.0
            for j in range(m):
                yt += y[i, j] * tissue_t[j, e]
            q = joint_misfit(yy, yt, yv[:proto.shape[0]], signals_sq, tissue_proto, pair_sq, e, fv_max)
            if size < k or q < hc[0]:
                size = heap_push(hc, top[i], size, k, q, e)

    @cuda.jit
    def pair_kernel(y, sig2, tissue, flow_t, flow_sq, fv_max, groups, kappa, te_weight, unit, p_zero, fv_rate, w_flow,
                    g_flow, f_moments, lw, tv, tv2, bb, yv, yvg, yyg, ytg, ytag, spike):
        i = cuda.grid(1)
        if i >= y.shape[0]:
            return
        pair_voxel(y[i], sig2[i], tissue[i], flow_t, flow_sq, fv_max, groups, kappa[i], te_weight, unit, p_zero, fv_rate,
                   w_flow[i], g_flow[i], f_moments[i], lw[i], tv[i], tv2[i], bb[i], yv[i], yvg[i], yyg[i], ytg[i],
                   ytag[i], spike[i])

    return profile_kernel, pair_kernel


def joint_profile_top(y, tissue_t, signals_sq, tissue_proto, pair_sq, proto, fv_max, top) -> None:
    """kernels.joint_profile_top on the device (tissue_t [M, E] instead of the product <y, t>: each thread
    forms its own); top [V, k] is filled (k <= MAX_CANDIDATES, R <= MAX_PROTOTYPES: joint.py checks)."""
    d_top = cuda.device_array(top.shape, np.int64)
    threads = 128
    _joint_kernels()[0][(len(y) + threads - 1) // threads, threads](
        cuda.to_device(np.ascontiguousarray(y)), _Resident.of(tissue_t), _Resident.of(signals_sq),
        _Resident.of(tissue_proto), _Resident.of(pair_sq), _Resident.of(proto), float(fv_max), d_top)
    d_top.copy_to_host(top)


def joint_pair_moments(y, sig2, tissue, flow_t, flow_sq, fv_max, groups, kappa, te_weight, w_flow, g_flow, f_moments,
                       log_w_shape, p_zero=0.0, fv_rate=0.0) -> None:
    """kernels.joint_pair_moments on the device (same arguments but the work space log_w, allocated in device
    memory: its shape; w_flow, g_flow and f_moments are filled)."""
    n_v, n_t, _ = tissue.shape
    n_f, n_g = flow_t.shape[1], kappa.shape[1]
    unit = bool(np.all(te_weight == 1.0))
    work = [cuda.device_array((n_v, n_t, n_f)) for _ in range(3 if unit else 4)]
    lw, tv, bb = work[0], work[1], work[2]
    tv2 = tv if unit else work[3]
    outs = [cuda.device_array_like(a) for a in (w_flow, g_flow, f_moments)]
    threads = 64
    _joint_kernels()[1][(n_v + threads - 1) // threads, threads](
        *(cuda.to_device(np.ascontiguousarray(a)) for a in (y, sig2, tissue)), _Resident.of(flow_t),
        _Resident.of(flow_sq), float(fv_max), _Resident.of(groups), cuda.to_device(np.ascontiguousarray(kappa)),
        _Resident.of(te_weight), unit, float(p_zero), float(fv_rate), *outs, lw, tv, tv2, bb, cuda.device_array((n_v, n_f)),
        cuda.device_array((n_v, n_g, n_f)), *(cuda.device_array((n_v, n_g)) for _ in range(3)),
        cuda.device_array((n_v, n_t)))
    for d, h in zip(outs, (w_flow, g_flow, f_moments)):
        d.copy_to_host(h)
