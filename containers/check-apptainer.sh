#!/usr/bin/env bash
# Make the Apptainer image from the Docker image that `containers/check-image.sh --keep` leaves, and run the
# demo inside it, on a machine where only Debian's packages are reachable (issue #39). As root:
#   1. makes a Debian sid root with apptainer, squashfuse and fuse3 from Debian's packages (mmdebstrap;
#      bookworm has no apptainer) and a user runner (uid 1001) in it;
#   2. enters it in a private mount namespace (unshare --mount, pivot_root; /proc, /sys, a /dev of its own
#      with /dev/fuse open to the user, one /tmp for every call): apptainer refuses a plain chroot;
#   3. saves the image as a docker-archive (buildah push) and builds the SIF from containers/apptainer.def;
#   4. runs the demo's participant and group levels inside the SIF as runner with --no-home (squashfuse mounts
#      the SIF; the image's compiled kernels must be used, nothing compiled) and as root with --no-privs
#      --containall (root here lacks CAP_SYS_RESOURCE in its bounding set, which apptainer's default keeps);
#   5. checks that the runs record "Container": {"Type": "apptainer"} and compares every fitted map with a
#      pip-installed run of the same commit (within 1e-6);
#   6. prints the SIF size, the build time, the cold start and the demo times; exits 0 only when all held.
#
#   bash containers/check-apptainer.sh [--keep] [--work DIR] [--image TAG] [--reference OUT] [--record]
#                                      [--root DIR] | --make-root DIR
#     --image TAG      the buildah image to convert (default localhost/dmrimc-bids:check, check-image.sh --keep)
#     --reference OUT  a pip-installed run of the demo's sub-01 with --seed 7 to compare with (default: run it)
#     --record         write the figures into docs/benchmarks.md (block apptainer-image)
#     --make-root DIR  only step 1, into DIR (no code involved: CI makes it while the tests run)
#     --root DIR       use the root --make-root made instead of making one
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${TMPDIR:-/tmp}/dmrimc-check-apptainer"
image="localhost/dmrimc-bids:check"
reference=""
given_root=""
make_root_only=""
keep=0
record=0
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) keep=1; shift ;;
        --record) record=1; shift ;;
        --work) work="$2"; shift 2 ;;
        --image) image="$2"; shift 2 ;;
        --reference) reference="$2"; shift 2 ;;
        --root) given_root="$2"; shift 2 ;;
        --make-root) make_root_only="$2"; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "check-apptainer.sh: unknown option $1" >&2; exit 64 ;;
    esac
done
say() { echo "check-apptainer.sh: $*"; }
fail() { echo "check-apptainer.sh: FAILED: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[ "$(id -u)" = 0 ] || fail "run as root (a mount namespace, pivot_root and mmdebstrap need it)"
for tool in mmdebstrap buildah unshare pivot_root setpriv mknod; do
    command -v "$tool" >/dev/null || fail "$tool is missing: apt-get install mmdebstrap buildah util-linux"
done
# 1. the root with apptainer (sid's Release file may be past its Valid-Until on the mirror)
make_root() {
    local dir=$1
    rm -rf "$dir"; mkdir -p "$(dirname "$dir")"
    say "mmdebstrap: Debian sid with apptainer, squashfuse, fuse3"
    mmdebstrap --quiet --variant=apt --include=apptainer,squashfuse,fuse3 \
        --aptopt='Acquire::Check-Valid-Until "false"' sid "$dir" >"$dir.mmdebstrap.log" 2>&1 \
        || { tail -20 "$dir.mmdebstrap.log" >&2; fail "mmdebstrap"; }
    cp /etc/hosts "$dir/etc/hosts"
    rm -f "$dir/etc/localtime"   # a link into tzdata, which the root lacks: apptainer binds it and fails
    if [ -e /etc/localtime ]; then cp -L /etc/localtime "$dir/etc/localtime"; fi
    echo 'runner:x:1001:1001::/home/runner:/bin/sh' >>"$dir/etc/passwd"
    echo 'runner:x:1001:' >>"$dir/etc/group"
    mkdir -p "$dir/home/runner" "$dir/data" "$dir/.oldroot"; chown 1001:1001 "$dir/home/runner"
}
if [ -n "$make_root_only" ]; then
    make_root "$make_root_only"
    say "root made in $make_root_only"
    exit 0
fi
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
buildah inspect "$image" >/dev/null 2>&1 || fail "no image $image: run bash containers/check-image.sh --keep first"
data="$work/data"
rm -rf "$work"; mkdir -p "$data/tmp" "$work/tmp"; chmod 1777 "$work/tmp"
if [ -n "$given_root" ]; then
    [ -x "$given_root/usr/bin/apptainer" ] || fail "--root $given_root: no apptainer in it (make it with --make-root)"
    root="$given_root"
else
    root="$work/root"
    make_root "$root"
fi

# 2. inside ROOT: a private mount namespace, ROOT a mount point, pivot_root; a clean environment
inside() {
    unshare --mount --propagation private bash -c '
        set -e
        root=$1 data=$2 tmp=$3; shift 3
        mount --bind "$root" "$root"
        mount -t proc proc "$root/proc"
        mount --rbind /sys "$root/sys"
        mount -t tmpfs -o mode=755 tmpfs "$root/dev"
        for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0 fuse:10:229; do
            IFS=: read -r name major minor <<<"$node"
            mknod -m 666 "$root/dev/$name" c "$major" "$minor"
        done
        mkdir -p "$root/dev/pts" "$root/dev/shm"
        mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
        ln -s pts/ptmx "$root/dev/ptmx"
        mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
        ln -s /proc/self/fd "$root/dev/fd"
        for n in 0:stdin 1:stdout 2:stderr; do ln -s "/proc/self/fd/${n%%:*}" "$root/dev/${n#*:}"; done
        mount --bind "$tmp" "$root/tmp"   # one /tmp for every call, as on a machine
        mount --bind "$data" "$root/data"
        cd "$root"
        pivot_root . .oldroot
        umount -l /.oldroot
        cd /
        exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
    ' inside "$root" "$data" "$work/tmp" "$@"
}
as_runner() { inside setpriv --reuid=1001 --regid=1001 --init-groups env HOME=/home/runner "$@"; }
inside apptainer --version >/dev/null || fail "apptainer does not start in the root"
say "$(inside apptainer --version)"

# 3. the SIF from the image, through a docker-archive and containers/apptainer.def
t0=$(now)
buildah push --quiet "$image" "docker-archive:$data/dmrimc-bids.tar:localhost/dmrimc-bids:check" >/dev/null \
    || fail "buildah push $image"
push=$(since "$t0")
cp "$here/containers/apptainer.def" "$data/apptainer.def"
t0=$(now)
inside env APPTAINER_TMPDIR=/data/tmp APPTAINER_CACHEDIR=/data/tmp/cache \
    apptainer build --notest --build-arg archive=/data/dmrimc-bids.tar /data/dmrimc-bids.sif /data/apptainer.def \
    >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; fail "apptainer build"; }
build=$(since "$t0")
# %test as runner: the build runs it as root with apptainer's default capabilities, which root here lacks
chmod a+rX "$data" "$data/dmrimc-bids.sif"
as_runner apptainer --quiet test /data/dmrimc-bids.sif >>"$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log" >&2; fail "apptainer test (the definition's %test)"; }
rm -rf "$data/dmrimc-bids.tar" "$data/tmp"
size=$(du -m "$data/dmrimc-bids.sif" | cut -f1)

# 4. the demo inside the SIF: runner with --no-home, root with --no-privs --containall
python3 - "$data" <<'EOF'
import sys
from dmrimc_bids.cli.demo import write_demo
write_demo(sys.argv[1] + "/bids")
EOF
mkdir -p "$data/out_runner" "$data/work_runner" "$data/out_root" "$data/work_root"
chmod -R a+rX "$data"; chown -R 1001:1001 "$data/out_runner" "$data/work_runner"
sif=/data/dmrimc-bids.sif
levels() {   # levels WHO OUT WORK APPTAINER-OPTIONS...: the participant level (timed), then the group level
    local who=$1 out=$2 wd=$3; shift 3
    local run=(apptainer --quiet run --cleanenv "$@" -B /data/bids:/bids:ro -B "/data/$out:/out" -B "/data/$wd:/work" "$sif")
    local enter=inside; [ "$who" = runner ] && enter=as_runner
    t0=$(now)
    "$enter" "${run[@]}" /bids /out participant --participant-label 01 --seed 7 -w /work \
        --derivatives /bids/derivatives/segmentation >"$work/$out.log" 2>&1 \
        || { tail -30 "$work/$out.log" >&2; fail "the participant level inside the SIF as $who ($*)"; }
    elapsed=$(since "$t0")
    "$enter" "${run[@]}" /bids /out group --participant-label 01 -w /work >>"$work/$out.log" 2>&1 \
        || { tail -30 "$work/$out.log" >&2; fail "the group level inside the SIF as $who ($*)"; }
    [ -s "$data/$out/group_histousim.tsv" ] && [ -s "$data/$out/sub-01.html" ] || fail "no group table or report ($who)"
    if grep -q "compiling the fitting kernels" "$work/$out.log"; then
        fail "the run as $who compiled kernels: the image's numba cache was not used ($work/$out.log)"
    fi
}
levels runner out_runner work_runner --no-home; demo_runner=$elapsed   # the user's first run
t0=$(now)
as_runner apptainer --quiet run --cleanenv "$sif" --version >>"$work/build.log" 2>&1 || fail "the SIF does not start as runner"
cold=$(since "$t0")
levels root out_root work_root --no-privs --containall; demo_root=$elapsed

# 5. what the runs recorded, and the maps against a pip-installed run
python3 - "$data/out_runner" "$data/out_root" <<'EOF' || fail "the runs inside the SIF do not record Apptainer"
import json, sys
for out in sys.argv[1:]:
    container = json.load(open(f"{out}/dataset_description.json"))["GeneratedBy"][0].get("Container", {})
    assert container.get("Type") == "apptainer", (out, container)
EOF
if [ -z "$reference" ]; then
    reference="$work/out_pip"
    dmrimc-bids "$data/bids" "$reference" participant --participant-label 01 --seed 7 \
        --derivatives "$data/bids/derivatives/segmentation" >"$work/out_pip.log" 2>&1 || fail "the pip-installed run"
fi
compared=""
for out in out_runner out_root; do
    line=$(python3 "$here/containers/compare-maps.py" "$data/$out" "$reference" --label "$out" 2>&1) \
        || fail "the maps of $out differ from the pip-installed run's ($reference): $line"
    say "$line"; compared="$compared; $line"
done

# 6. the figures
figures="SIF $size MiB (buildah push ${push} s, apptainer build ${build} s); cold start (dmrimc-bids --version as uid 1001, squashfuse, after its first run) ${cold} s; demo sub-01 participant level: ${demo_runner} s as uid 1001 with --no-home (its first run: the image's numba cache copied, nothing compiled), ${demo_root} s as root with --no-privs --containall"
say "$figures"
if [ "$record" = 1 ]; then
    python3 - "$here" "$(inside apptainer --version)" "$figures" "$compared" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1] + "/benchmarks")
from _record import machine, record
record("apptainer-image", f"`bash containers/check-apptainer.sh --record` ({machine()}; {sys.argv[2]} from Debian sid): "
       f"{sys.argv[3]}. Against the pip-installed run of the same commit{sys.argv[4]}.")
EOF
fi
[ "$keep" = 1 ] || rm -rf "$work"
say "passed"
