#!/usr/bin/env bash
# Install dmrimc-bids on a Debian (bookworm) machine: the one install path of the Docker image (which the
# Apptainer image is made from); CI (.ci/run) installs its system packages with it and builds that image.
#
#   containers/install.sh [--venv DIR] [--extras LIST] [--apt-extra "PKG ..."] [--templateflow SPEC ...]
#                         [--numba-cache DIR] [--smoke-test] [--slim] [--system-only] [--expect-version V]
#
#   --venv DIR          virtual environment to create or reuse (default /opt/dmrimc)
#   --extras LIST       package extras, comma-separated (default spice,atlas)
#   --apt-extra PKGS    more Debian packages (CI: the test tools chromium, slurm-wlm, munge)
#   --templateflow SPEC fetch TemplateFlow files into $TEMPLATEFLOW_HOME for offline use (needs internet);
#                       SPEC is TEMPLATE:ATLAS[:DESC[:RES]] as for --atlas, repeatable
#   --numba-cache DIR   compile the numba kernels into DIR during --smoke-test, writable by any user
#   --smoke-test        run the entrypoint on the embedded demo dataset (one subject, then the group level)
#   --slim              drop apt lists and pip caches (image builds)
#   --system-only       only the Debian packages (CI: the README's command then installs the package)
#   --expect-version V  fail unless the installed package's version (dmrimc_bids/__init__.py) is V (the
#                       Dockerfile's --build-arg VERSION, which labels the image)
#
# System packages are installed with apt-get when it is available and we are root; otherwise the script
# says which are missing and goes on (the PySpice backend is optional).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$(dirname "$here")"
venv=/opt/dmrimc
extras=spice,atlas
apt_extra=""
templateflow=()
numba_cache=""
smoke=0
slim=0
system_only=0
expect_version=""
while [ $# -gt 0 ]; do
    case "$1" in
        --venv) venv="$2"; shift 2 ;;
        --extras) extras="$2"; shift 2 ;;
        --apt-extra) apt_extra="$2"; shift 2 ;;
        --templateflow) templateflow+=("$2"); shift 2 ;;
        --numba-cache) numba_cache="$2"; shift 2 ;;
        --smoke-test) smoke=1; shift ;;
        --slim) slim=1; shift ;;
        --system-only) system_only=1; shift ;;
        --expect-version) expect_version="${2-}"; [ -n "$expect_version" ] || expect_version="(none)"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
done

# ngspice's shared library for the PySpice flow solver (extra [spice]); -dev has the unversioned .so
packages="libngspice0 libngspice0-dev $apt_extra"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "install.sh: apt-get install $packages"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null
    if [ "$slim" = 1 ]; then rm -rf /var/lib/apt/lists/*; fi
else
    echo "install.sh: not root or no apt-get: install $packages yourself if you need them" >&2
fi

if [ "$system_only" = 1 ]; then exit 0; fi

pip_flags=(--quiet --disable-pip-version-check)
if [ "$slim" = 1 ]; then pip_flags+=(--no-cache-dir); fi
python3 -m venv "$venv"
"$venv/bin/pip" install "${pip_flags[@]}" "$src[$extras]"
"$venv/bin/dmrimc-bids" --version
if [ -n "$expect_version" ]; then
    installed=$("$venv/bin/python" -c 'import dmrimc_bids; print(dmrimc_bids.__version__)')
    if [ "$installed" != "$expect_version" ]; then
        echo "install.sh: error: the image is labelled version $expect_version but the package is $installed." \
             "Fix: build with --build-arg VERSION=$installed (the version lives in dmrimc_bids/__init__.py)" >&2
        exit 1
    fi
fi

for spec in "${templateflow[@]}"; do
    : "${TEMPLATEFLOW_HOME:?set TEMPLATEFLOW_HOME to the folder the atlases go into}"
    echo "install.sh: fetching TemplateFlow $spec into $TEMPLATEFLOW_HOME"
    # the same lookup as --atlas at the group level (workflows/group.py), which downloads what is missing
    "$venv/bin/python" - "$spec" <<'PY'
import sys
from dmrimc_bids.core.errors import InputError
from dmrimc_bids.workflows.group import atlas_spec
try:
    print(atlas_spec(sys.argv[1]))
except InputError as exc:
    sys.exit(f"install.sh: {exc}")
PY
done
if [ "${#templateflow[@]}" -gt 0 ]; then chmod -R a+rX "$TEMPLATEFLOW_HOME"; fi

if [ "$smoke" = 1 ]; then
    if [ -n "$numba_cache" ]; then mkdir -p "$numba_cache"; export NUMBA_CACHE_DIR="$numba_cache"; fi
    scratch="$(mktemp -d)"
    "$venv/bin/dmrimc-bids-demo" "$scratch/bids" >/dev/null
    "$venv/bin/dmrimc-bids" "$scratch/bids" "$scratch/out" participant --participant-label 01 \
        -w "$scratch/work" --nprocs 2 --derivatives "$scratch/bids/derivatives/segmentation"
    "$venv/bin/dmrimc-bids" "$scratch/bids" "$scratch/out" group --participant-label 01 -w "$scratch/work"
    test -s "$scratch/out/sub-01.html" && test -s "$scratch/out/group.html"
    echo "install.sh: smoke test passed (demo sub-01: maps, report, group table)"
    rm -rf "$scratch"
    # any user (docker run -u, Apptainer's caller) may read the compiled kernels and add to them
    if [ -n "$numba_cache" ]; then chmod -R a+rwX "$numba_cache"; fi
fi
echo "install.sh: dmrimc-bids installed in $venv"
