"""The console run's environment in containers (cli/environment.py, bids/provenance.container_type)."""

import os

from dmrimc_bids.bids.provenance import container_type
from dmrimc_bids.cli import environment


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
    monkeypatch.setattr(environment.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "image_cache")}
    assert environment.numba_cache(env, is_writable=lambda p: True) == "" and env["NUMBA_CACHE_DIR"].endswith("image_cache")
    read_only = lambda p: not str(p).startswith(str(tmp_path / "image_cache"))  # noqa: E731
    notice = environment.numba_cache(env, is_writable=read_only)
    assert "read-only" in notice and env["NUMBA_CACHE_DIR"] == str(tmp_path / "tmp" / f"dmrimc-numba-{os.getuid()}")
    assert (tmp_path / "tmp" / f"dmrimc-numba-{os.getuid()}" / "pkg_abc" / "kernels.fit-12.py311.nbi").read_bytes() == b"index"
    env2 = {"NUMBA_CACHE_DIR": str(tmp_path / "image_cache")}
    assert "read-only" in environment.numba_cache(env2, is_writable=read_only)   # the copy is reused
    assert env2["NUMBA_CACHE_DIR"] == env["NUMBA_CACHE_DIR"]


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
