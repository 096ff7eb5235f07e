#!/usr/bin/env bash
# Build the project's Dockerfile and run the demo inside the image, on a machine where only Debian's
# packages and PyPI (or the machine's own pip indexes) are reachable (issue #30):
#   1. installs buildah and mmdebstrap (apt-get, as root);
#   2. makes a Debian bookworm base with Debian's python3 (mmdebstrap) and imports it into buildah;
#   3. builds the Dockerfile on it (--build-arg BASE=..., Docker format: SHELL is a Docker instruction), pip inside the build using this machine's pip
#      configuration: its config files and every local path they name are mounted read-only, nothing is
#      written into the repository;
#   4. runs the demo's participant and group levels inside the image as the image's non-root user;
#   5. compares the maps with a pip-installed run of the same commit (fitted voxels, within 1e-6);
#   6. prints the image size and the cold-start time; exits 0 only when all of that held.
#
#   bash containers/check-image.sh [--keep] [--work DIR] [--base-tar FILE] | --make-base FILE
#     --make-base FILE  only step 2's mmdebstrap, into FILE (no code involved: CI makes it while the tests run)
#     --base-tar FILE   use the base --make-base made instead of making one
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${TMPDIR:-/tmp}/dmrimc-check-image"
keep=0
base_tar=""
make_base_only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) keep=1; shift ;;
        --work) work="$2"; shift 2 ;;
        --base-tar) base_tar="$2"; shift 2 ;;
        --make-base) make_base_only="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "check-image.sh: unknown option $1" >&2; exit 64 ;;
    esac
done
say() { echo "check-image.sh: $*"; }
fail() { echo "check-image.sh: FAILED: $*" >&2; exit 1; }

export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}" BUILDAH_ISOLATION=chroot
tag="localhost/dmrimc-bids:check"
base="localhost/dmrimc-base:bookworm"

# 1. the tools
if ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null; then
    [ "$(id -u)" = 0 ] || fail "buildah and mmdebstrap are missing and this is not root: apt-get install buildah mmdebstrap"
    say "apt-get install buildah mmdebstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah mmdebstrap >/dev/null
fi

# 2. the base image from Debian's packages
make_base() {
    say "mmdebstrap: Debian bookworm with python3"
    mkdir -p "$(dirname "$1")"
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$1"
}
if [ -n "$make_base_only" ]; then
    make_base "$make_base_only"
    say "base made in $make_base_only"
    exit 0
fi
rm -rf "$work"; mkdir -p "$work"
if [ -n "$base_tar" ]; then
    [ -s "$base_tar" ] || fail "--base-tar $base_tar: no such base (make it with --make-base)"
else
    base_tar="$work/base.tar"
    make_base "$base_tar"
fi
ctr=$(buildah from scratch)
mnt=$(buildah mount "$ctr")
tar -xf "$base_tar" -C "$mnt"
buildah umount "$ctr" >/dev/null
buildah commit -q "$ctr" "$base" >/dev/null
buildah rm "$ctr" >/dev/null
rm -f "$work/base.tar"

# 3. the build, with this machine's pip configuration passed through (read-only mounts)
mounts=()
for conf in /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf" \
            ${PIP_CONFIG_FILE:+"$PIP_CONFIG_FILE"}; do
    [ -f "$conf" ] && mounts+=(--volume "$conf:/etc/pip.conf:ro")
done
while read -r path; do   # a local index: mount the folder above .../simple (its links point beside it)
    case "$path" in */simple|*/simple/) path="$(dirname "${path%/}")" ;; esac
    [ -e "$path" ] && mounts+=(--volume "$path:$path:ro")
done < <(python3 -m pip config list 2>/dev/null | sed -E "s/^[^=]+='?([^']*)'?$/\1/" | tr ' ' '\n' \
         | sed -E 's#^file://##' | grep '^/' | sort -u)
say "buildah build on $base (${#mounts[@]} pip mount arguments)"
t0=$(date +%s)
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$here/dmrimc_bids/__init__.py")
buildah bud --quiet --format docker --layers=false --build-arg BASE="$base" --build-arg TEMPLATEFLOW_ATLASES= \
    --build-arg VERSION="$version" \
    "${mounts[@]}" -t "$tag" "$here" >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; fail "the build"; }
say "built in $(( $(date +%s) - t0 )) s"
size=$(buildah inspect --format '{{.FromImageID}}' "$tag" >/dev/null 2>&1; buildah images --format '{{.Size}}' "$tag" | head -1)

# 4. the demo inside the image, as its non-root user
python3 - "$work" <<'EOF'
import sys
from dmrimc_bids.cli.demo import write_demo
write_demo(sys.argv[1] + "/bids")
EOF
mkdir -p "$work/out_image" "$work/out_pip"
chmod -R a+rwX "$work"
ctr=$(buildah from "$tag")
run_in() { buildah run --user 1000:1000 --volume "$work:/data" "$ctr" -- "$@"; }
t0=$(date +%s.%N)
run_in dmrimc-bids --version >/dev/null || fail "the entrypoint does not start"
cold=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")
t0=$(date +%s.%N)
run_in dmrimc-bids /data/bids /data/out_image participant --participant-label 01 --seed 7 \
    --derivatives /data/bids/derivatives/segmentation || fail "the participant level inside the image"
demo=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")
run_in dmrimc-bids /data/bids /data/out_image group --participant-label 01 || fail "the group level inside the image"
[ -f "$work/out_image/group_histousim.tsv" ] && [ -f "$work/out_image/sub-01.html" ] || fail "no group table or report"
buildah rm "$ctr" >/dev/null

# 5. the same commit pip-installed (this environment's dmrimc-bids), then the comparison
dmrimc-bids "$work/bids" "$work/out_pip" participant --participant-label 01 --seed 7 \
    --derivatives "$work/bids/derivatives/segmentation" >/dev/null 2>&1 || fail "the pip-installed run"
python3 "$here/containers/compare-maps.py" "$work/out_image" "$work/out_pip" --label check-image.sh \
    || fail "the image's maps differ from the pip-installed run's"

# 6. the figures
say "image $tag: size $size; cold start (dmrimc-bids --version in a new container) $cold s; demo sub-01 participant level inside the image $demo s"
[ "$keep" = 1 ] || { buildah rmi "$tag" "$base" >/dev/null 2>&1 || true; rm -rf "$work"; }
say "passed"
