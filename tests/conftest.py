import shutil
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
HISTO_LOO = SHARED / "reference" / "histo_loo"


@pytest.fixture(autouse=True, scope="session")
def private_temporary_directory(tmp_path_factory):
    """Every temporary folder the code makes (tempfile: the runs' work folders without -w, reports, simulations)
    goes under pytest's own base folder, which pytest prunes: a test never leaves one in the system's /tmp."""
    import tempfile
    folder = tmp_path_factory.mktemp("tempfile")
    saved = tempfile.tempdir
    tempfile.tempdir = str(folder)
    yield folder
    tempfile.tempdir = saved


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """The full demo dataset (2 subjects, 3 sessions), written once."""
    from dmrimc_bids.cli.demo import write_demo
    return write_demo(tmp_path_factory.mktemp("demo") / "bids")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, demo_dir):
    """The participant level on the whole demo dataset (seed 7, 2 processes): (exit code, out, work)."""
    from dmrimc_bids.cli.run import main
    out = tmp_path_factory.mktemp("out") / "deriv"
    work = tmp_path_factory.mktemp("work")
    code = main([str(demo_dir), str(out), "participant", "-w", str(work), "--nprocs", "2", "--seed", "7",
                 "--derivatives", str(demo_dir / "derivatives" / "segmentation")])
    return code, out, work


@pytest.fixture
def single_demo(tmp_path, demo_dir):
    """A private one-subject copy of the demo dataset (sub-01), safe to damage."""
    dst = tmp_path / "bids"
    shutil.copytree(demo_dir, dst, ignore=shutil.ignore_patterns("sub-02"))
    (dst / "participants.tsv").write_text("participant_id\nsub-01\n")
    return dst


def histo_loo_or_skip():
    if not (HISTO_LOO / "npy_files").is_dir():
        pytest.skip(f"reference data not found at {HISTO_LOO} (shared/ is not part of the package)")
    return HISTO_LOO


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A single-node SLURM cluster started for the tests (root, Debian slurm-wlm + munge); skipped where it
    cannot run, unless DMRIMC_REQUIRE_SLURM=1 (CI installs it, so there the tests must run)."""
    import os

    from .slurm_cluster import Cluster, missing
    why = missing()
    if why:
        if os.environ.get("DMRIMC_REQUIRE_SLURM") == "1":
            pytest.fail(f"DMRIMC_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    cluster = Cluster(tmp_path_factory.mktemp("slurm")).start()
    old = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env)
    yield cluster
    cluster.stop()
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
