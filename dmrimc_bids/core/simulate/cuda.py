"""Optional CUDA path of the Monte Carlo walk (numba.cuda; ``pip install 'dmrimc-bids[gpu]'``).

One GPU thread walks one walker. The per-walker routines are the very source of kernels.py: each
``py_func`` is re-compiled as a CUDA device function in a namespace where its callees are the device
versions, so the CPU and GPU walks share their physics line for line (same RNG streams, same
reflection and crossing rules). Trajectories can differ in the last bits (fused multiply-adds), so
signals agree statistically, not bit for bit. ``walk_all`` and ``accumulate`` have the CPU drivers'
signatures. With ``NUMBA_ENABLE_CUDASIM=1`` they run in numba's simulator (slow; used by the tests).
"""

from __future__ import annotations

import functools
import math
import types

import numpy as np

from ..cudacompat import import_numba_cuda
from . import kernels

cuda = import_numba_cuda()

_DEVICE_ROUTINES = ("mix64", "uniform", "walker_state", "first_hit", "locate", "walk", "accumulate_one")
_CONSTANTS = ("EPS_UM", "EPS_U", "_GOLDEN", "_M1", "_M2", "_S30", "_S27", "_S31", "_S11", "_TO_UNIT")
THREADS_PER_BLOCK = 128


def available() -> bool:
    """True when numba sees a usable CUDA GPU (or the simulator is on)."""
    try:
        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001 - no driver, no toolkit, no numba-cuda: no GPU
        return False


@functools.lru_cache(maxsize=1)
def _compiled():
    namespace = {"math": math, "np": np}
    namespace.update({k: getattr(kernels, k) for k in _CONSTANTS})
    for name in _DEVICE_ROUTINES:
        py = getattr(kernels, name).py_func
        fn = types.FunctionType(py.__code__, namespace, name, py.__defaults__, py.__closure__)
        namespace[name] = cuda.jit(device=True)(fn)
    walk, acc_one = namespace["walk"], namespace["accumulate_one"]

    @cuda.jit
    def walk_kernel(seed, walker0, start_xy, cfg, d_in, d_ex, step_in, step_ex, p_ie, p_ei, n_steps, dt,
                    max_bounce, owner, cell_ptr, cell_seg, cell_xy, nx, ny, hx, hy, lx, ly, ev_step, ev_ptr,
                    ev_wave, ev_coef, phase, disp, label, bounced_out, track_lo, track):
        i = cuda.grid(1)
        if i < cfg.shape[0]:
            walk(i, seed, walker0, start_xy, cfg, d_in, d_ex, step_in, step_ex, p_ie, p_ei, n_steps, dt,
                 max_bounce, owner, cell_ptr, cell_seg, cell_xy, nx, ny, hx, hy, lx, ly, ev_step, ev_ptr,
                 ev_wave, ev_coef, phase, disp, label, bounced_out, track_lo, track)

    @cuda.jit
    def acc_kernel(phase, group_start, group_stop, meas_wave, meas_sqrt_b, acc):
        job = cuda.grid(1)
        n_g, n_m = acc.shape[0], acc.shape[1]
        if job < n_g * n_m * 2:
            g = job // (n_m * 2)
            m = (job // 2) % n_m
            if meas_wave[m] >= 0:
                acc_one(g, m, job % 2, phase, group_start, group_stop, meas_wave, meas_sqrt_b, acc)

    return walk_kernel, acc_kernel


class _Session:
    """Keeps the last batch's phases on the device so `accumulate` needs no copy back."""

    phase = None
    host_phase = None


def walk_all(seed, walker0, start_xy, cfg, d_in, d_ex, step_in, step_ex, p_ie, p_ei, n_steps, dt, max_bounce,
             owner, cell_ptr, cell_seg, cell_xy, nx, ny, hx, hy, lx, ly, ev_step, ev_ptr, ev_wave, ev_coef,
             phase, disp, label, bounced_out, track_lo, track):
    """GPU kernels.walk_all (same arguments; phase, disp, label, bounced_out and track are filled)."""
    walk_kernel = _compiled()[0]
    arrays = [start_xy if start_xy.shape[0] else np.zeros((1, 2)), cfg, d_in, d_ex, step_in, step_ex, p_ie, p_ei,
              owner, cell_ptr, cell_seg, cell_xy, ev_step, ev_ptr, ev_wave, ev_coef]
    dev = [cuda.to_device(np.ascontiguousarray(a)) for a in arrays]
    if not start_xy.shape[0]:
        dev[0] = cuda.to_device(np.zeros((0, 2)))
    d_phase, d_disp, d_label, d_bounced, d_track = (cuda.to_device(a) for a in (phase, disp, label, bounced_out,
                                                                                track))
    n = cfg.shape[0]
    blocks = (n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
    with np.errstate(over="ignore"):  # 64-bit RNG arithmetic wraps by design (simulator warns)
        walk_kernel[blocks, THREADS_PER_BLOCK](seed, walker0, dev[0], dev[1], dev[2], dev[3], dev[4], dev[5], dev[6],
                                               dev[7], n_steps, dt, max_bounce, dev[8], dev[9], dev[10], dev[11], nx,
                                               ny, hx, hy, lx, ly, dev[12], dev[13], dev[14], dev[15], d_phase, d_disp,
                                               d_label, d_bounced, track_lo, d_track)
    d_phase.copy_to_host(phase)
    if track.size:
        d_track.copy_to_host(track)
    d_disp.copy_to_host(disp)
    d_label.copy_to_host(label)
    d_bounced.copy_to_host(bounced_out)
    _Session.phase, _Session.host_phase = d_phase, phase


def accumulate(phase, group_start, group_stop, meas_wave, meas_sqrt_b, acc):
    """GPU kernels.accumulate (same arguments; acc is incremented)."""
    acc_kernel = _compiled()[1]
    d_phase = _Session.phase if _Session.host_phase is phase else cuda.to_device(phase)
    dev = [cuda.to_device(np.ascontiguousarray(a)) for a in (group_start, group_stop, meas_wave, meas_sqrt_b, acc)]
    n = acc.shape[0] * acc.shape[1] * 2
    acc_kernel[(n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK, THREADS_PER_BLOCK](d_phase, *dev)
    dev[4].copy_to_host(acc)
