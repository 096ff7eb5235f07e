"""The CUDA path, run in numba's CUDA simulator (no GPU needed), against the CPU path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = r"""
import json, numpy as np
from dmrimc_bids.core.analytic import analytic_dictionary, two_compartment_signal
from dmrimc_bids.core.fitting.dictfit import DictionaryModel
from dmrimc_bids.core.protocol import Protocol
proto = Protocol([500, 1000, 2000, 2500] * 2, [10] * 4 + [15] * 4, [22.5] * 4 + [45] * 4)
dic = analytic_dictionary().select(["fin", "vCS_cyl"], {"D0in": 1.9, "D0ex": 1.9}).match(proto)
rng = np.random.default_rng(0)
p = np.column_stack([rng.uniform(0.3, 0.7, 6), rng.uniform(9, 15, 6)])
clean = two_compartment_signal(proto.b, proto.small_delta_ms, proto.big_delta_ms, p[:, 0], p[:, 1], 1.9, 1.9)
noisy = np.abs(clean + 0.02 * rng.standard_normal(clean.shape))
out = {}
for device in ("cpu", "gpu"):
    for noise in ("offset-gaussian", "rician"):
        fit = DictionaryModel(dic, device=device, noise=noise, n_neighbours=12).fit(noisy, sigma=np.full(6, 0.02))
        out[device + noise] = {k: np.asarray(v).tolist() for k, v in fit.maps().items()}
        out[device + noise + "info"] = fit.info
print(json.dumps(out))
"""


@pytest.mark.slow
def test_gpu_path_matches_cpu_in_the_cuda_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for noise in ("offset-gaussian", "rician"):
        assert out["gpu" + noise + "info"]["device"] == "gpu"
        cpu, gpu = out["cpu" + noise], out["gpu" + noise]
        for k in ("fin", "vCS_cyl", "fin_sd", "fobj", "exitcode"):
            assert np.allclose(gpu[k], cpu[k], rtol=1e-9, atol=1e-12), (noise, k)


POSTERIOR_SCRIPT = r"""
import json, numpy as np
from dmrimc_bids.core.dictionary import Dictionary
from dmrimc_bids.core.fitting.posterior import PosteriorModel
from dmrimc_bids.core.protocol import Protocol
b = np.array([300.0, 1000, 2000, 3000])
f, d = np.meshgrid(np.linspace(0.1, 0.9, 9), np.linspace(0.3, 1.2, 4), indexing="ij")
p = np.stack([f.ravel(), d.ravel()], 1)
sig = p[:, :1] * np.exp(-np.outer(p[:, 1], b) * 1e-3) + (1 - p[:, :1]) * np.exp(-2.5e-3 * b)
dic = Dictionary(sig, p, ["fin", "D0in"], Protocol(b, 10.0, 30.0))
rng = np.random.default_rng(1)
y = np.abs(sig[[3, 17, 30]] + 0.02 * rng.standard_normal((3, 4)))
out = {}
for device in ("cpu", "gpu"):
    for noise in ("offset-gaussian", "gaussian"):
        model = PosteriorModel(dic, device=device, noise=noise)
        fit = model.fit(y, sigma=np.full(3, 0.02))
        out[device + noise] = {k: np.asarray(v).tolist() for k, v in fit.maps().items()}
        out[device + noise + "device"] = fit.info["device"]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_posterior_gpu_kernel_matches_cpu_in_the_cuda_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    res = subprocess.run([sys.executable, "-c", POSTERIOR_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for noise in ("offset-gaussian", "gaussian"):
        assert out["gpu" + noise + "device"] == "gpu" and out["cpu" + noise + "device"] == "cpu"
        cpu, gpu = out["cpu" + noise], out["gpu" + noise]
        assert set(cpu) == set(gpu) and "fin_ci95lo" in cpu
        for k in cpu:
            assert np.allclose(gpu[k], cpu[k], rtol=1e-9, atol=1e-12), (noise, k)


SELECT_SCRIPT = r"""
import json, numpy as np
from tests.test_posterior import SELECTION_CASES, selection_case
from dmrimc_bids.core.fitting import gpu, kernels
from dmrimc_bids.core.fitting.posterior import PosteriorModel
dic, y, var = selection_case()
flo2 = np.full_like(y, 1e-4)
out = {}
for prior, n, scale_var in SELECTION_CASES:
    model = PosteriorModel(dic, prior=prior)
    if scale_var is None:
        clean, kappa = np.zeros((5, 1)), np.zeros(5)
    else:
        var = np.full(5, 4e-4)
        clean, kappa = model._common_scale(y, np.full(5, 1e-2), var, np.asarray(scale_var))
    res = {}
    for name, backend in (("cpu", kernels), ("gpu", gpu), ("again", gpu)):
        top, c, rss = np.empty((5, n), np.int64), np.empty((5, n)), np.empty(5)
        backend.select_smallest(y, flo2, model.signals_t, clean, kappa, model.log_prior, var, prior == "design", top, c, rss)
        res[name] = [top.tolist(), c.tolist(), rss.tolist()]
    out[f"{prior}{n}{scale_var is not None}"] = res
print(json.dumps(out))
"""


def test_posterior_selection_on_the_device_matches_the_cpu_in_the_cuda_simulator():
    """gpu.select_smallest runs kernels.select_voxel's own source: the same entries in the same heap order,
    their costs and the least misfit as the CPU's, in every case of the CPU test (design prior, unknown σ²,
    common scale, ties), and the same again on a second run."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    res = subprocess.run([sys.executable, "-c", SELECT_SCRIPT], capture_output=True, text=True, env=env, timeout=600,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(out) == 4
    for key, r in out.items():
        assert r["gpu"][0] == r["cpu"][0] == r["again"][0], key
        np.testing.assert_allclose(r["gpu"][1], r["cpu"][1], rtol=1e-12, err_msg=key)
        np.testing.assert_allclose(r["gpu"][2], r["cpu"][2], rtol=1e-12, err_msg=key)


JOINT_SCRIPT = r"""
import json, numpy as np
from tests.test_joint import flow_dictionary, mixed, tissue_dictionary
from dmrimc_bids.core.fitting.joint import JointModel
tissue, flow = tissue_dictionary(), flow_dictionary()
rng = np.random.default_rng(2)
it, iv, fv = rng.integers(0, len(tissue), 8), rng.integers(0, len(flow), 8), rng.uniform(0.0, 0.2, 8)
y = np.abs(mixed(tissue, flow, it, iv, fv) + 0.01 * rng.standard_normal((8, len(tissue.protocol))))
out = {}
for device in ("cpu", "gpu"):
    model = JointModel(tissue, flow, device=device, b0_noise_ratio=0.5, t2_tissue_ms=80.0, t2_blood_ms=120.0)
    fit = model.fit(y, sigma=np.full(8, 0.01))
    out[device] = {k: np.asarray(v).tolist() for k, v in fit.maps().items()}
    out[device + "device"] = [fit.tissue.info["device"], model.device]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_joint_fit_on_the_gpu_matches_cpu_in_the_cuda_simulator():
    """The joint fit on the device: the tissue candidates, the pair posterior (with the blood's T2 weights) and
    the tissue step (the common-scale likelihood and the selection): every map the same as the CPU's."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    res = subprocess.run([sys.executable, "-c", JOINT_SCRIPT], capture_output=True, text=True, env=env, timeout=600,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["gpudevice"] == ["gpu", "gpu"] and out["cpudevice"] == ["cpu", "cpu"]
    assert set(out["cpu"]) == set(out["gpu"]) and "fin" in out["cpu"] and "vascular:fV" in out["cpu"]
    for k in out["cpu"]:
        assert np.allclose(out["gpu"][k], out["cpu"][k], rtol=1e-9, atol=1e-12, equal_nan=True), k


def test_cuda_import_leaves_numpy_alone():
    """Importing the CUDA paths does not add np.row_stack to a NumPy that has none (NumPy >= 2.5)."""
    code = ("import numpy as np\n"
            "if hasattr(np, 'row_stack'): del np.row_stack\n"
            "import dmrimc_bids.core.simulate.cuda, dmrimc_bids.core.fitting.gpu\n"
            "assert not hasattr(np, 'row_stack'), 'np.row_stack was patched'\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]


class _BrokenGPU:
    """A GPU backend whose kernels the driver refuses, as a CUDA toolkit mismatch would (numba's CudaAPIError)."""

    @staticmethod
    def grid_search(*args, **kwargs):
        from numba.cuda.cudadrv.driver import CudaAPIError
        raise CudaAPIError(222, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION")

    refine = grid_search


class _BuggyGPU:
    """A GPU backend with a bug of its own (not a CUDA failure)."""

    @staticmethod
    def grid_search(*args, **kwargs):
        raise IndexError("kernel bug: index 7 out of range")

    refine = grid_search


def test_device_auto_falls_back_to_cpu_with_one_warning(monkeypatch, caplog):
    from dmrimc_bids.core.analytic import analytic_dictionary, two_compartment_signal
    from dmrimc_bids.core.fitting import dictfit
    from dmrimc_bids.core.protocol import Protocol

    proto = Protocol([500, 1000, 2000, 2500] * 2, [10] * 4 + [15] * 4, [22.5] * 4 + [45] * 4)
    dic = analytic_dictionary().select(["fin", "vCS_cyl"], {"D0in": 1.9, "D0ex": 1.9}).match(proto)
    data = np.stack([two_compartment_signal(proto.b, proto.small_delta_ms, proto.big_delta_ms, f, 12.0, 1.9, 1.9)
                     for f in (0.3, 0.5, 0.7)])
    cpu = dictfit.DictionaryModel(dic, device="cpu", chunk_size=2).fit(data)
    monkeypatch.setattr(dictfit, "_backend", lambda device, *estimator: _BrokenGPU)
    with caplog.at_level("WARNING"):
        auto = dictfit.DictionaryModel(dic, device="auto", chunk_size=2).fit(data)
    assert np.array_equal(auto.params["fin"], cpu.params["fin"]) and auto.info["device"] == "cpu"
    assert sum("GPU dictionary fit failed" in r.getMessage() for r in caplog.records) == 1
    import pytest
    from numba.cuda.cudadrv.driver import CudaAPIError
    with pytest.raises(CudaAPIError, match="PTX"):
        dictfit.DictionaryModel(dic, device="gpu").fit(data)
    # a bug of the GPU path is raised under auto too, never hidden behind a CPU rerun
    monkeypatch.setattr(dictfit, "_backend", lambda device, *estimator: _BuggyGPU)
    with pytest.raises(IndexError, match="kernel bug"):
        dictfit.DictionaryModel(dic, device="auto", chunk_size=2).fit(data)


def test_device_auto_takes_the_gpu_only_where_it_was_measured_faster(monkeypatch):
    """A visible GPU: 'auto' keeps the ML and posterior kernels on the CPU (AUTO_USES_GPU: the ML kernel ran
    at 0.3x of 16 cores; the posterior's is untimed on hardware), 'gpu' takes it; a verdict turned to
    faster makes 'auto' take it; an unknown device is an error."""
    import pytest

    from dmrimc_bids.core.fitting import dictfit, gpu, kernels

    monkeypatch.setattr(gpu, "available", lambda: True)
    for estimator in ("ml", "posterior"):
        assert dictfit._backend("auto", estimator) is kernels
        assert dictfit._backend("gpu", estimator) is gpu
        assert dictfit._backend("cpu", estimator) is kernels
    monkeypatch.setitem(dictfit.AUTO_USES_GPU, "posterior", True)
    assert dictfit._backend("auto", "posterior") is gpu and dictfit._backend("auto", "ml") is kernels
    with pytest.raises(ValueError, match="device"):
        dictfit._backend("tpu", "ml")
