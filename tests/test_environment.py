"""The console run's environment in containers (cli/environment.py, core/jitcache.usable_cache,
bids/provenance.container_type)."""

import os
import shutil
import subprocess
import sys

import pytest
from pathlib import Path

from dmrimc_bids.bids.provenance import container_type
from dmrimc_bids.cli import environment
from dmrimc_bids.core import jitcache


def test_apptainer_is_recognised_over_the_docker_images_env():
    """A SIF built from our Docker image keeps DMRIMC_CONTAINER_TYPE=docker; Apptainer's own variables say what
    runs us (main recorded "docker" inside Apptainer)."""
    assert container_type({"DMRIMC_CONTAINER_TYPE": "docker"}) == "docker"
    assert container_type({"DMRIMC_CONTAINER_TYPE": "docker", "APPTAINER_CONTAINER": "/x/dmrimc.sif"}) == "apptainer"
    assert container_type({"SINGULARITY_CONTAINER": "/x/old.sif"}) == "apptainer"
    assert container_type({}) == ""


def test_dataset_description_records_apptainer(tmp_path, monkeypatch):
    import json

    from dmrimc_bids.bids.derivatives import write_dataset_description
    monkeypatch.setenv("DMRIMC_CONTAINER_TYPE", "docker")
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/dmrimc.sif")
    (tmp_path / "bids").mkdir()
    write_dataset_description(tmp_path / "out", tmp_path / "bids")
    gen = json.loads((tmp_path / "out" / "dataset_description.json").read_text())["GeneratedBy"][0]
    assert gen["Container"]["Type"] == "apptainer"


def test_read_only_numba_cache_is_copied_with_its_kernels(tmp_path, monkeypatch):
    """A read-only NUMBA_CACHE_DIR (a SIF) is copied once into a private folder, compiled kernels included, with
    one notice; a writable one is left alone."""
    image = tmp_path / "image_cache" / "pkg_abc"
    image.mkdir(parents=True)
    (image / "kernels.fit-12.py311.nbi").write_bytes(b"index")
    monkeypatch.setattr(jitcache.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "image_cache")}
    assert jitcache.usable_cache(env, is_writable=lambda p: True) == "" and env["NUMBA_CACHE_DIR"].endswith("image_cache")
    read_only = lambda p: not str(p).startswith(str(tmp_path / "image_cache"))  # noqa: E731
    notice = jitcache.usable_cache(env, is_writable=read_only)
    assert "read-only" in notice and env["NUMBA_CACHE_DIR"] == str(tmp_path / "tmp" / f"dmrimc-numba-{os.getuid()}")
    assert (tmp_path / "tmp" / f"dmrimc-numba-{os.getuid()}" / "pkg_abc" / "kernels.fit-12.py311.nbi").read_bytes() == b"index"
    env2 = {"NUMBA_CACHE_DIR": str(tmp_path / "image_cache")}
    assert "read-only" in jitcache.usable_cache(env2, is_writable=read_only)   # the copy is reused
    assert env2["NUMBA_CACHE_DIR"] == env["NUMBA_CACHE_DIR"]


def test_no_writable_numba_cache_gives_a_private_one(tmp_path, monkeypatch):
    """No NUMBA_CACHE_DIR, a read-only package and no home (a SIF run with --no-home): a private temporary cache;
    with the package's __pycache__ or ~/.cache/numba writable, numba's own places are kept."""
    monkeypatch.setattr(jitcache.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    package, home = tmp_path / "site" / "fitting", tmp_path / "home"
    only_tmp = lambda p: str(p).startswith(str(tmp_path / "tmp"))  # noqa: E731
    env = {"HOME": str(home)}
    notice = jitcache.usable_cache(env, is_writable=only_tmp, kernel_folder=package)
    assert env["NUMBA_CACHE_DIR"] == str(tmp_path / "tmp" / f"dmrimc-numba-{os.getuid()}") and "compile into" in notice
    for writable_place in (package, home):
        env = {"HOME": str(home)}
        ok = lambda p, w=writable_place: str(p).startswith(str(w))  # noqa: E731
        assert jitcache.usable_cache(env, is_writable=ok, kernel_folder=package) == "" and "NUMBA_CACHE_DIR" not in env


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to run as another user")
def test_kernels_import_as_a_user_who_can_write_no_cache(tmp_path):
    """What a SIF run with --no-home is: another user (nobody), the package and NUMBA_CACHE_DIR read-only to it,
    HOME missing. main raised "cannot cache function ...: no locator available" when the kernels were imported;
    now they import and run from a private cache, and the command line says so in one line."""
    import tempfile
    base = Path(tempfile.mkdtemp(dir="/tmp"))   # pytest's base folder is private to root
    try:
        _import_as_nobody(base)
    finally:
        shutil.rmtree(base)


def _import_as_nobody(base):
    image_cache, tmp = base / "image_cache", base / "tmp"
    image_cache.mkdir(), tmp.mkdir()
    tmp.chmod(0o1777), base.chmod(0o755)
    code = ("import numpy as np; from dmrimc_bids.core import jitcache; from dmrimc_bids.core.fitting import kernels; "
            "import numba; print(numba.config.CACHE_DIR); print(jitcache.CACHE_NOTICE)")
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "TMPDIR": str(tmp),
           "NUMBA_CACHE_DIR": str(image_cache)}
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                         env=env, capture_output=True, text=True, timeout=300)
    if "Permission denied" in res.stderr and "site-packages" not in res.stderr and "dmrimc_bids" not in res.stderr:
        pytest.skip(f"nobody cannot read this checkout: {res.stderr[-300:]}")
    assert res.returncode == 0, res.stderr[-2000:]
    cache_dir, notice = res.stdout.splitlines()[-2:]
    assert cache_dir == str(tmp / "dmrimc-numba-65534") and "read-only" in notice


def test_matplotlib_config_is_the_users_own(tmp_path, monkeypatch):
    """Another user's /tmp/matplotlib (not writable here) gives way to ~/.config/matplotlib, or, without a
    writable home (--no-home), a per-user folder in the temporary directory."""
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setattr(environment.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    not_shared = lambda p: not str(p).startswith(str(shared))  # noqa: E731
    env = {"MPLCONFIGDIR": str(shared), "HOME": str(tmp_path / "home")}
    environment.matplotlib_config(env, is_writable=not_shared)
    assert env["MPLCONFIGDIR"] == str(tmp_path / "home" / ".config" / "matplotlib")
    no_home = lambda p: not_shared(p) and not str(p).startswith(str(tmp_path / "home"))  # noqa: E731
    env = {"MPLCONFIGDIR": str(shared), "HOME": str(tmp_path / "home")}
    environment.matplotlib_config(env, is_writable=no_home)
    assert env["MPLCONFIGDIR"] == str(tmp_path / "tmp" / f"matplotlib-{os.getuid()}")
    env = {"MPLCONFIGDIR": str(shared)}
    environment.matplotlib_config(env, is_writable=lambda p: True)
    assert env["MPLCONFIGDIR"] == str(shared)
