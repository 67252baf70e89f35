#!/usr/bin/env bash
# The test bed's own L2 kernel (issue 13): Debian's kernels lack CONFIG_IOMMUFD, so the bed builds one from
# Debian's linux-source-6.12 with `make tinyconfig` plus l2.config (next to this script): the Intel IOMMU, VFIO with
# both the type1 container and the device cdev, iommufd, NVMe and KVM, all built in. It also boots L2 about three
# times faster than the Debian kernel with its modules.
#
#   tests/testbed/kernel/build.sh        # progress on stderr; the bzImage's path, alone, on stdout
#   TESTBED_KERNEL=$(tests/testbed/kernel/build.sh) tests/testbed/run.sh
#
# The result is cached under $TESTBED_CACHE/own-kernel (default build/testbed/own-kernel), keyed by the source
# package's version and a hash of l2.config: only a cold run (or a new Debian source release, or an edited
# fragment) pays for the build, about 3-5 minutes of 2 cores. Older builds are removed when a new one completes.
# The build tools (flex, bison, libelf-dev, bc) are installed with apt-get when missing; the source package is only
# downloaded and unpacked, never installed. Run as root on Debian bookworm (amd64), like run.sh.
#
# Knobs: TESTBED_CACHE (as run.sh), TESTBED_KERNEL_SOURCE_PKG (default linux-source-6.12),
# TESTBED_KERNEL_JOBS (default: the number of CPUs), TESTBED_KERNEL_NICE (the niceness of the build, default 10).
# shellcheck disable=SC2086 # $missing is a list of package names, word-split on purpose
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
CACHE=${TESTBED_CACHE:-$REPO/build/testbed}
# Not "kernel-*": run.sh removes $CACHE/kernel-* trees that are not its current Debian kernel.
ROOT=$CACHE/own-kernel
DEBS=$ROOT/debs
SOURCE_PKG=${TESTBED_KERNEL_SOURCE_PKG:-linux-source-6.12}
JOBS=${TESTBED_KERNEL_JOBS:-$(nproc)}
NICE=${TESTBED_KERNEL_NICE:-10}
FRAGMENT=$HERE/l2.config
BUILD_TOOLS="flex bison libelf-dev bc"

T0=$EPOCHREALTIME
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf 'kernel: [%6ss] %s\n' "$(since "$T0")" "$*" >&2; }
die() {
    printf 'kernel: FAILED: %s\n' "$*" >&2
    exit 1
}

[[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "TESTBED_KERNEL_JOBS must be a positive whole number, not '$JOBS'"
[[ $NICE =~ ^[0-9]+$ ]] || die "TESTBED_KERNEL_NICE must be a whole number, not '$NICE'"
[ -f "$FRAGMENT" ] || die "no config fragment at $FRAGMENT"
mkdir -p "$DEBS/partial"

# One build at a time per cache (two bed runs started together would otherwise race on the same tree).
exec 9>"$ROOT/.lock"
flock -n 9 || {
    say "another build holds $ROOT/.lock; waiting for it"
    flock 9
}

# ---- which source version ------------------------------------------------------------------------------------
APT_OPTS=(-o Debug::NoLocking=1 -o Dir::Cache::archives="$DEBS")
[ "$(id -u)" -ne 0 ] || APT_OPTS+=(-o APT::Sandbox::User=root)
# The file name apt would store (name_version_arch.deb, with ':' as %3a): resolved against an empty directory,
# because --print-uris leaves out what the archives directory already holds.
RESOLVE=$ROOT/.resolve
rm -rf "$RESOLVE" && mkdir -p "$RESOLVE/partial"
SOURCE_DEB=$(apt-get download --print-uris -o Debug::NoLocking=1 -o Dir::Cache::archives="$RESOLVE" "$SOURCE_PKG" |
    awk "/^'/ { print \$2 }" | sed -n 1p)
rm -rf "$RESOLVE"
[ -n "$SOURCE_DEB" ] || die "apt knows no package $SOURCE_PKG (is bookworm-security in the apt sources, and the lists fresh? run apt-get update)"
VERSION=${SOURCE_DEB%.deb}
FRAG_HASH=$(sha256sum "$FRAGMENT" | cut -c1-12)
KEY=$VERSION-$FRAG_HASH
OUT=$ROOT/bzImage-$KEY
if [ -s "$OUT" ]; then
    say "cached: $OUT ($SOURCE_DEB, l2.config $FRAG_HASH)"
    echo "$OUT"
    exit 0
fi
say "building for $SOURCE_DEB and l2.config $FRAG_HASH (nothing cached under $ROOT)"

# ---- build tools ---------------------------------------------------------------------------------------------
missing=""
for p in $BUILD_TOOLS gcc make libc6-dev; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "installing the build tools:$missing"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing >"$ROOT/apt-install.log" 2>&1 ||
        die "apt-get install$missing failed; see $ROOT/apt-install.log"
fi

# ---- fetch and unpack the source -----------------------------------------------------------------------------
if [ ! -s "$DEBS/$SOURCE_DEB" ]; then
    say "downloading $SOURCE_DEB"
    (cd "$DEBS" && apt-get download "${APT_OPTS[@]}" "$SOURCE_PKG") >"$ROOT/download.log" 2>&1 ||
        die "apt-get download $SOURCE_PKG failed; see $ROOT/download.log"
    [ -s "$DEBS/$SOURCE_DEB" ] || die "apt-get download left no $DEBS/$SOURCE_DEB"
fi
SRC=$ROOT/src-$VERSION
if [ ! -e "$SRC/.complete" ]; then
    say "unpacking $SOURCE_DEB"
    rm -rf "$SRC" "$SRC.tmp"
    mkdir -p "$SRC.tmp/deb"
    dpkg -x "$DEBS/$SOURCE_DEB" "$SRC.tmp/deb"
    tarball=$(find "$SRC.tmp/deb/usr/src" -maxdepth 1 -name 'linux-source-*.tar.*' | sed -n 1p)
    [ -n "$tarball" ] || die "$SOURCE_DEB has no usr/src/linux-source-*.tar.*"
    tar -xf "$tarball" -C "$SRC.tmp" --strip-components=1
    rm -rf "$SRC.tmp/deb"
    [ -f "$SRC.tmp/Makefile" ] || die "the tarball in $SOURCE_DEB has no top-level Makefile"
    touch "$SRC.tmp/.complete"
    mv "$SRC.tmp" "$SRC"
fi

# ---- configure: tinyconfig + the fragment, then check that every line of the fragment holds -------------------
OBJ=$ROOT/obj-$KEY
mkdir -p "$OBJ"
LOG=$ROOT/build-$KEY.log
: >"$LOG"
# TESTBED_KERNEL_NICE is the niceness make runs at, not an increment: a caller that is niced already is not
# niced again (two increments of 10 would be 19, and the build would get almost no CPU on a busy machine).
NICE_BY=$((NICE - $(nice)))
[ "$NICE_BY" -ge 0 ] || NICE_BY=0
make_() { nice -n "$NICE_BY" make -C "$SRC" O="$OBJ" ARCH=x86_64 "$@" >>"$LOG" 2>&1; }
say "configuring: tinyconfig + $(grep -c '^CONFIG_' "$FRAGMENT") options from l2.config"
make_ tinyconfig || die "make tinyconfig failed; see $LOG"
(cd "$OBJ" && "$SRC/scripts/kconfig/merge_config.sh" -m -O "$OBJ" .config "$FRAGMENT") >>"$LOG" 2>&1 ||
    die "merge_config.sh failed; see $LOG"
make_ olddefconfig || die "make olddefconfig failed; see $LOG"
unmet=""
while IFS= read -r line; do
    case $line in
    CONFIG_*=*) grep -qxF "$line" "$OBJ/.config" || unmet="$unmet ${line%%=*}(wanted ${line#*=}, got $(grep -E "^(# )?${line%%=*}[= ]" "$OBJ/.config" || echo absent))" ;;
    "# CONFIG_"*" is not set")
        opt=${line#\# }
        opt=${opt%% *}
        ! grep -q "^$opt=" "$OBJ/.config" || unmet="$unmet $opt(wanted off)"
        ;;
    esac
done <"$FRAGMENT"
[ -z "$unmet" ] || die "the final .config does not have:$unmet (a dependency is missing from l2.config?)"

# ---- build, with a progress line every 30 s ------------------------------------------------------------------
say "make -j$JOBS bzImage (nice $NICE); log $LOG"
T_BUILD=$EPOCHREALTIME
make_ -j"$JOBS" bzImage &
make_pid=$!
while kill -0 "$make_pid" 2>/dev/null; do
    for _ in $(seq 30); do
        kill -0 "$make_pid" 2>/dev/null || break
        sleep 1
    done
    kill -0 "$make_pid" 2>/dev/null || break
    say "  ... $(grep -cE '^ +(CC|AS|LD|AR)' "$LOG") objects built, last: $(grep -E '^ +[A-Z]+ ' "$LOG" | tail -n 1 | awk '{print $2}')"
done
wait "$make_pid" || {
    tail -n 30 "$LOG" >&2
    die "make bzImage failed; see $LOG"
}
[ -s "$OBJ/arch/x86/boot/bzImage" ] || die "make bzImage left no arch/x86/boot/bzImage; see $LOG"
cp "$OBJ/arch/x86/boot/bzImage" "$OUT.tmp"
cp "$OBJ/.config" "$OUT.config"
mv "$OUT.tmp" "$OUT"
say "built in $(since "$T_BUILD")s: $OUT ($(($(stat -c %s "$OUT") / 1024)) KiB)"

# ---- drop what other keys left (the object tree is only needed for the build) ---------------------------------
rm -rf "$OBJ"
for f in "$ROOT"/bzImage-* "$ROOT"/src-* "$ROOT"/build-*.log "$DEBS"/*.deb; do
    [ -e "$f" ] || continue
    case $f in "$OUT" | "$OUT.config" | "$SRC" | "$LOG" | "$DEBS/$SOURCE_DEB") continue ;; esac
    say "removing superseded $(basename "$f")"
    rm -rf "$f"
done
echo "$OUT"
