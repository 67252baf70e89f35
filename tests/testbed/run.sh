#!/usr/bin/env bash
# The nested VFIO test bed (issue 7): Linux (L2) under QEMU TCG with an emulated Intel IOMMU and an emulated NVMe,
# where vfio-pci, the type1 IOMMU and KVM all work. One command fetches what it needs (Debian packages, unpacked
# into a cache; nothing is installed into /), builds a static refvmm, packs an initramfs, boots L2 under `timeout`
# and checks the markers its /init prints. Inside L2, after the host-side steps and the payload, Linux boots as L3
# under QEMU and under refvmm with the NVMe passed through (issue 10, l3linux/), and the verdict prints the two
# side by side. See tests/testbed/README.md for the knobs and how to read the output.
#
#   tests/testbed/run.sh            # exit 0: every step passed; otherwise non-zero with a pointer to the log
# shellcheck disable=SC2086 # lists of .deb names and module paths are word-split on purpose (no spaces in them)
set -euo pipefail
set -E # the ERR trap also fires inside functions
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

# ---- knobs (README.md "Knobs") ------------------------------------------------------------------------------
CACHE=${TESTBED_CACHE:-$REPO/build/testbed}
INTERACTIVE=${TESTBED_INTERACTIVE:-0}      # 1: QEMU in the foreground, a shell in L2 at the end
TIMEOUT=${TESTBED_TIMEOUT:-420}            # seconds per L2 boot, hard limit
[ "$INTERACTIVE" != 1 ] || TIMEOUT=${TESTBED_TIMEOUT:-3600}
RETRIES=${TESTBED_RETRIES:-2}              # extra boots after a hang (timeout, silence, RCU stall or lockup) or an L2 reset, never after a FAIL
QUIET=${TESTBED_QUIET_TIMEOUT:-60}         # seconds without serial output that count as a hang (0: off)
KEEP=${TESTBED_KEEP:-0}                    # 1: keep the disk image and initramfs of a passing run
APT_UPDATE=${TESTBED_APT_UPDATE:-auto}     # auto (when lists are missing or older than APT_MAX_AGE days) | always | never
APT_MAX_AGE=${TESTBED_APT_MAX_AGE:-7}
KERNEL_PKG=${TESTBED_KERNEL_PKG:-}         # default: what linux-image-amd64 depends on
KERNEL_IMAGE=${TESTBED_KERNEL:-}           # a bzImage with everything built in for L2, instead of TESTBED_L2_KERNEL's
L2_KERNEL=${TESTBED_L2_KERNEL:-own}         # own (kernel/build.sh: iommufd, everything built in) | debian (linux-image-amd64's)
IOMMU_BACKENDS=${TESTBED_IOMMU-}           # the back ends of the L3 nvme_e2e runs; default: type1 iommufd (own kernel), type1 (Debian's)
CARGO_DIR=${TESTBED_CARGO_TARGET_DIR:-$REPO/target/testbed}
REFVMM_PREBUILT=${TESTBED_REFVMM:-}        # a static refvmm to use instead of building one
PAYLOAD_DIR=${TESTBED_PAYLOAD:-$HERE/payload}
HOST_TOOL=${TESTBED_HOST_TOOL:-refvmm}     # refvmm | sysfs | auto (refvmm if it has the commands): who does check/bind/unbind in L2
SERIAL=${TESTBED_SERIAL:-REFVMM-TESTBED-0001}
PATTERN_LBA=${TESTBED_PATTERN_LBA:-100}
DISK_MIB=${TESTBED_DISK_MIB:-64}
SMP=${TESTBED_SMP:-2}
MEM=${TESTBED_MEM:-2G}                     # L2's RAM (the speed pass's 1 GiB guests and huge pages fit in 2G)
APPEND_EXTRA=${TESTBED_APPEND:-}           # extra kernel command-line words
QEMU_EXTRA=${TESTBED_QEMU_ARGS:-}          # extra QEMU arguments (word-split)
RUST_LOG_L2=${TESTBED_RUST_LOG:-}          # RUST_LOG for refvmm inside L2
KVM_AMD_OPTS=${TESTBED_KVM_AMD_OPTS-}      # kvm_amd module parameters in L2
L3_LINUX=${TESTBED_L3_LINUX-}             # the L3 Linux passes, in order (qemu, refvmm); off: none; default below
L3_MEM_MIB=${TESTBED_L3_MEM_MIB:-512}      # L3 RAM and vCPUs, the same for both VMMs
L3_CPUS=${TESTBED_L3_CPUS:-2}
L3_IOS=${TESTBED_L3_IOS:-2048}             # 4 KiB direct reads of the L3 workload
L3_TIMEOUT=${TESTBED_L3_TIMEOUT:-120}      # seconds per L3 Linux pass (busybox timeout in L2)
L3_APPEND=${TESTBED_L3_APPEND:-}           # extra words for L3's kernel command line
L3_REFVMM_ARGS=${TESTBED_L3_REFVMM_ARGS:-} # extra arguments for refvmm's L3 Linux pass (e.g. --prefault-threads 0)
HEARTBEAT=${TESTBED_HEARTBEAT:-15}         # seconds between progress lines of a long stage (0: none)
SPEED=${TESTBED_SPEED:-}                   # on | off: the speed pass (issue 15, speed/); default: on with Debian's L2 kernel
SPEED_SIZES=${TESTBED_SPEED_SIZES:-256M 512M 1G} # guest RAM sizes of the start-up comparison
SPEED_BAR_MIB=${TESTBED_SPEED_BAR_MIB:-256} # the ivshmem-plain BAR2 (a power of two)
SPEED_STORE_MIB=${TESTBED_SPEED_STORE_MIB:-512} # MiB of stores per pass into it, by L2 and by the guest (a pass of 64 MiB took only 20-50 ms, too short against L2's timer ticks)
SPEED_PREFAULT=${TESTBED_SPEED_PREFAULT:-}  # extra refvmm thp runs with these --prefault-threads counts (e.g. "1 0")

# What QEMU is given with -nodefaults (TESTBED.md): the NVMe is the first device after the host bridge.
NVME_BDF=0000:00:01.0
NVME_ID=1b36:0010
# Modules L2 needs; their dependencies come from modules.dep. kvm_amd/kvm_intel: /init loads the one the CPU has.
MODULES="nvme e1000e vfio vfio_iommu_type1 vfio_pci kvm kvm_amd kvm_intel"
QEMU_PKGS="qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu"

case $L2_KERNEL in own | debian) ;; *)
    echo "testbed: TESTBED_L2_KERNEL must be own or debian, not '$L2_KERNEL'" >&2
    exit 2
    ;;
esac
if [ -z "$L3_LINUX" ]; then
    # L3 Linux runs on Debian's L2 kernel only. Nested SVM under TCG is not dependable on the own 6.12 kernel:
    # QEMU's L3 Linux never returns from its first `sleep 1` there (its TSC-deadline timer never fires), and
    # of 5 refvmm L3 Linux passes there, 2 triple-faulted at random points of the boot and 1 reset L2 itself
    # (README.md, "What it covers"). On Debian's kernel both passed every run.
    L3_LINUX="qemu refvmm"
    [ "$L2_KERNEL" = own ] && [ -z "$KERNEL_IMAGE" ] && L3_LINUX=off
fi
if [ -z "$SPEED" ]; then
    # The start-up comparison needs transparent and hugetlbfs huge pages in L2, which only Debian's kernel has
    # (kernel/l2.config leaves them out); QEMU's L3 also works only there (README.md, "What it covers").
    SPEED=off
    [ "$L2_KERNEL" = debian ] && [ -z "$KERNEL_IMAGE" ] && SPEED=on
fi
case $SPEED in on | off) ;; *)
    echo "testbed: TESTBED_SPEED must be on or off, not '$SPEED'" >&2
    exit 2
    ;;
esac
for _s in $SPEED_PREFAULT; do
    [[ $_s =~ ^[0-9]+$ ]] || {
        echo "testbed: TESTBED_SPEED_PREFAULT lists numbers of threads, not '$_s'" >&2
        exit 2
    }
done
for _s in $SPEED_SIZES; do
    [[ $_s =~ ^[1-9][0-9]*[MG]$ ]] || {
        echo "testbed: TESTBED_SPEED_SIZES lists sizes like 256M or 1G, not '$_s'" >&2
        exit 2
    }
done
[[ $SPEED_BAR_MIB =~ ^[0-9]+$ && $SPEED_BAR_MIB -ge 1 && $((SPEED_BAR_MIB & (SPEED_BAR_MIB - 1))) -eq 0 && $SPEED_STORE_MIB =~ ^[1-9][0-9]*$ ]] || {
    echo "testbed: TESTBED_SPEED_BAR_MIB takes a power of two, TESTBED_SPEED_STORE_MIB a whole number" >&2
    exit 2
}
if [ -z "$IOMMU_BACKENDS" ]; then
    # Debian's kernels have no CONFIG_IOMMUFD (kernel/README.md); a TESTBED_KERNEL is assumed to be like the own one.
    IOMMU_BACKENDS="type1 iommufd"
    [ "$L2_KERNEL" = debian ] && [ -z "$KERNEL_IMAGE" ] && IOMMU_BACKENDS=type1
fi
for _b in $IOMMU_BACKENDS; do
    case $_b in type1 | iommufd) ;; *)
        echo "testbed: TESTBED_IOMMU lists type1 and/or iommufd, not '$_b'" >&2
        exit 2
        ;;
    esac
done
case $HOST_TOOL in refvmm | sysfs | auto) ;; *)
    echo "testbed: TESTBED_HOST_TOOL must be refvmm, sysfs or auto, not '$HOST_TOOL'" >&2
    exit 2
    ;;
esac
[[ $TIMEOUT =~ ^[0-9]+$ && $RETRIES =~ ^[0-9]+$ && $QUIET =~ ^[0-9]+$ && $PATTERN_LBA =~ ^[0-9]+$ && $DISK_MIB =~ ^[0-9]+$ &&
    $L3_MEM_MIB =~ ^[0-9]+$ && $L3_CPUS =~ ^[1-9][0-9]*$ && $L3_IOS =~ ^[1-9][0-9]*$ && $L3_TIMEOUT =~ ^[0-9]+$ && $HEARTBEAT =~ ^[0-9]+$ ]] || {
    echo "testbed: TESTBED_TIMEOUT, TESTBED_RETRIES, TESTBED_QUIET_TIMEOUT, TESTBED_PATTERN_LBA, TESTBED_DISK_MIB, TESTBED_L3_MEM_MIB, TESTBED_L3_CPUS, TESTBED_L3_IOS, TESTBED_L3_TIMEOUT and TESTBED_HEARTBEAT take whole numbers" >&2
    exit 2
}
# L3_REFVMM_ARGS goes into /init inside single quotes through sed: no quotes, '|' or shell syntax.
[[ $L3_REFVMM_ARGS =~ ^[-A-Za-z0-9_=.,:/\ ]*$ ]] || {
    echo "testbed: TESTBED_L3_REFVMM_ARGS takes plain refvmm arguments (letters, digits, - _ = . , : / and spaces), not '$L3_REFVMM_ARGS'" >&2
    exit 2
}
[ "$L3_LINUX" != off ] || L3_LINUX=""
for _p in $L3_LINUX; do
    case $_p in qemu | refvmm) ;; *)
        echo "testbed: TESTBED_L3_LINUX lists qemu and/or refvmm (or is 'off'), not '$_p'" >&2
        exit 2
        ;;
    esac
done
[ $((PATTERN_LBA + 12)) -le $((DISK_MIB * 2048)) ] || {
    echo "testbed: the L3 Linux passes write LBA TESTBED_PATTERN_LBA+10 and +11, beyond the ${DISK_MIB} MiB disk" >&2
    exit 2
}
[[ $SERIAL =~ ^[A-Za-z0-9._-]{1,20}$ ]] || {
    echo "testbed: TESTBED_SERIAL must be 1-20 characters of [A-Za-z0-9._-] (the NVMe serial field)" >&2
    exit 2
}
[ $((PATTERN_LBA + 1)) -le $((DISK_MIB * 2048)) ] || {
    echo "testbed: TESTBED_PATTERN_LBA=$PATTERN_LBA is beyond the ${DISK_MIB} MiB disk" >&2
    exit 2
}

# The blocks the L3 Linux passes write (l3linux/passes.sh): other checks of the image leave them out.
L3_LBAS="$((PATTERN_LBA + 10)) $((PATTERN_LBA + 11))"
[ -n "$L3_LINUX" ] || L3_LBAS=""
DEBS=$CACHE/debs
RUN=$CACHE/run
LOGS=$RUN/logs

# ---- output: stages with wall-clock timings -----------------------------------------------------------------
T0=$EPOCHREALTIME
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
exec 3>&1 # the terminal; stage bodies write their noise to the stage log
say() { printf '    %s\n' "$*" >&3; }
STAGE=setup
STAGE_LOG=/dev/null
STAGE_N=0
on_error() {
    local rc=$1 line=$2
    # In a subshell (a command substitution) only leave it: the main shell decides whether that is fatal.
    [ "$BASHPID" = "$$" ] || exit "$rc"
    trap - ERR
    stop_heartbeat
    printf '\nTESTBED FAIL: stage "%s" failed (exit %s at run.sh:%s) after %ss in all.\n' \
        "$STAGE" "$rc" "$line" "$(since "$T0")" >&3
    if [ -s "$STAGE_LOG" ]; then
        printf "Last lines of %s:\n" "$STAGE_LOG" >&3
        tail -n 25 "$STAGE_LOG" | sed "s/^/  | /" >&3
    fi
    if [ -n "${BOOT_LOG:-}" ] && [ -s "$BOOT_LOG" ]; then
        printf "Last lines of the L2 serial log %s (before its kernel log dump):\n" "$BOOT_LOG" >&3
        sed "/^TESTBED: DMESG BEGIN/,/^TESTBED: DMESG END/d" "$BOOT_LOG" | tr -d "\r" | tail -n 30 | sed "s/^/  | /" >&3
    fi
    exit 1
}
trap 'on_error $? $LINENO' ERR
trap stop_heartbeat EXIT
die() { # die MESSAGE: a failure with a reason (the ERR trap adds the stage and log)
    say "error: $*"
    echo "error: $*"
    return 1
}
# heartbeat T0 LOG: every HEARTBEAT seconds, how long the stage has run and the last line of what it is doing (the
# stage log, or the file a stage names in $RUN/.progress, e.g. L2's serial log), so a long stage is never silent.
heartbeat() {
    local t0=$1 log=$2 src line
    # Not the bed's lock (fd 9): a run must not hold it after its last stage. And when stop_heartbeat ends this
    # subshell, its `sleep` goes with it rather than holding the terminal open until it wakes.
    exec 9>&-
    trap 'kill "$!" 2>/dev/null; exit 0' TERM
    while sleep "$HEARTBEAT" & wait "$!"; do
        src=$log
        [ -s "$RUN/.progress" ] && src=$(cat "$RUN/.progress")
        line=$(tr -d '\r' <"$src" 2>/dev/null | grep -av '^ *$' | tail -n 1 | cut -c1-110) || true
        printf '    ... %ss: %s\n' "$(since "$t0")" "${line:-(no output yet)}" >&3
    done
}
HEARTBEAT_PID=""
stop_heartbeat() {
    if [ -n "$HEARTBEAT_PID" ]; then
        kill "$HEARTBEAT_PID" 2>/dev/null || true
        wait "$HEARTBEAT_PID" 2>/dev/null || true
    fi
    HEARTBEAT_PID=""
    rm -f "$RUN/.progress"
}
# stage "title" function: runs the function with stdout/stderr in its own log, and prints its wall time.
stage() {
    local title=$1 t
    shift
    STAGE=$title
    STAGE_N=$((STAGE_N + 1))
    STAGE_LOG=$LOGS/$(printf '%02d' "$STAGE_N")-${title// /-}.log
    printf '==> [%6ss] %s\n' "$(since "$T0")" "$title" >&3
    t=$EPOCHREALTIME
    if [ "$HEARTBEAT" -gt 0 ] && [ "$INTERACTIVE" != 1 ]; then
        heartbeat "$t" "$STAGE_LOG" &
        HEARTBEAT_PID=$!
    fi
    "$@" >"$STAGE_LOG" 2>&1
    stop_heartbeat
    printf '    done in %ss\n' "$(since "$t")" >&3
}

mkdir -p "$CACHE" "$DEBS"
# One run at a time per cache: the run directory and the unpacked trees are shared.
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
    echo "testbed: another run holds $CACHE/.lock; waiting for it" >&3
    flock 9
fi
rm -rf "$RUN"
mkdir -p "$LOGS"
printf 'testbed: cache %s, logs %s\n' "$CACHE" "$LOGS" >&3

# ---- 1. apt lists -------------------------------------------------------------------------------------------
APT_UPDATED=0
apt_update() {
    if [ "$(id -u)" -ne 0 ]; then
        say "warning: not root, cannot run apt-get update; using the lists as they are"
        return 0
    fi
    say "apt-get update ($1)"
    if ! apt-get update -q; then
        say "warning: apt-get update failed; continuing with the lists as they are"
    fi
    APT_UPDATED=1
}
stage_apt_lists() {
    local newest age_days
    newest=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -printf '%T@\n' 2>/dev/null | sort -n | tail -n 1)
    case $APT_UPDATE in
    always) apt_update "TESTBED_APT_UPDATE=always" ;;
    never) say "lists not refreshed (TESTBED_APT_UPDATE=never)" ;;
    auto)
        if [ -z "$newest" ]; then
            apt_update "no package lists"
        else
            age_days=$(awk -v t="$newest" -v now="$(date +%s)" 'BEGIN { printf "%d", (now - t) / 86400 }')
            if [ "$age_days" -gt "$APT_MAX_AGE" ]; then
                apt_update "lists are $age_days days old, more than TESTBED_APT_MAX_AGE=$APT_MAX_AGE"
            else
                say "lists are $age_days days old: used as they are"
            fi
        fi
        ;;
    *) die "TESTBED_APT_UPDATE must be auto, always or never, not '$APT_UPDATE'" ;;
    esac
}

# ---- 1b. L2's own kernel (issue 13) ---------------------------------------------------------------------------
# kernel/build.sh: Debian's linux-source-6.12 with tinyconfig + kernel/l2.config (iommufd, VFIO cdev, everything
# built in), cached under $CACHE/own-kernel by source version and config hash. Its progress goes to the stage log
# (the heartbeat shows it); its stdout is the bzImage's path.
stage_own_kernel() {
    if [ -n "$KERNEL_IMAGE" ]; then
        say "L2 kernel: TESTBED_KERNEL=$KERNEL_IMAGE"
    elif [ "$L2_KERNEL" = debian ]; then
        say "L2 kernel: Debian's (TESTBED_L2_KERNEL=debian)"
    else
        KERNEL_IMAGE=$(TESTBED_CACHE="$CACHE" bash "$HERE/kernel/build.sh")
        say "L2 kernel: the own one, $KERNEL_IMAGE"
    fi
    say "L3 nvme_e2e runs over: $IOMMU_BACKENDS"
}

# ---- 2. fetch -----------------------------------------------------------------------------------------------
APT_OPTS=(-o Debug::NoLocking=1 -o Dir::Cache::archives="$DEBS")
[ "$(id -u)" -ne 0 ] || APT_OPTS+=(-o APT::Sandbox::User=root)
# --print-uris leaves out what the archives directory already holds: resolve against an empty one.
RESOLVE_DIR=$CACHE/.resolve
RESOLVE_OPTS=(-o Debug::NoLocking=1 -o Dir::Cache::archives="$RESOLVE_DIR")
# uris_to_files: the file names (as apt stores them) from `--print-uris` output.
uris_to_files() { awk "/^'/ { print \$2 }"; }
resolve_sets() {
    rm -rf "$RESOLVE_DIR"
    mkdir -p "$RESOLVE_DIR/partial"
    # The Debian kernel boots L2 with TESTBED_L2_KERNEL=debian, and L3 Linux always (the own kernel lacks what L3
    # needs: ACPI tables of a PC, the nvme driver as a module, virtio; see README.md).
    if [ -n "$KERNEL_IMAGE" ] && [ -z "$L3_LINUX" ]; then
        KERNEL_PKG=""
    elif [ -z "$KERNEL_PKG" ]; then
        KERNEL_PKG=$(apt-cache show --no-all-versions linux-image-amd64 |
            sed -n 's/^Depends: .*\(linux-image-[0-9][^ ,]*-amd64\).*/\1/p' | sed -n 1p)
        [ -n "$KERNEL_PKG" ] || die "cannot tell which kernel linux-image-amd64 depends on (apt-cache show linux-image-amd64)"
    fi
    # The named QEMU packages, plus the libraries this host lacks (what `apt-get install` would bring).
    QEMU_DEBS=$(
        {
            apt-get download --print-uris "${RESOLVE_OPTS[@]}" $QEMU_PKGS
            apt-get install -qq --download-only --no-install-recommends --print-uris "${RESOLVE_OPTS[@]}" qemu-system-x86
        } | uris_to_files | sort -u
    )
    [ -n "$QEMU_DEBS" ] || die "apt resolved no QEMU packages"
    KERNEL_DEB=""
    if [ -n "$KERNEL_PKG" ]; then
        KERNEL_DEB=$(apt-get download --print-uris "${RESOLVE_OPTS[@]}" "$KERNEL_PKG" | uris_to_files)
        [ -n "$KERNEL_DEB" ] || die "apt has no $KERNEL_PKG"
    fi
    BUSYBOX_DEB=$(apt-get download --print-uris "${RESOLVE_OPTS[@]}" busybox-static | uris_to_files)
    [ -n "$BUSYBOX_DEB" ] || die "apt has no busybox-static"
    # Every .deb the bed uses (file names carry no spaces).
    ALL_DEBS="$QEMU_DEBS $KERNEL_DEB $BUSYBOX_DEB"
}
missing_debs() { # missing_debs FILE...: the ones not in the cache yet
    local f
    for f in "$@"; do [ -s "$DEBS/$f" ] || echo "$f"; done
}
download_all() {
    local missing
    missing=$(missing_debs $QEMU_DEBS)
    if [ -n "$missing" ]; then
        say "downloading $(echo "$missing" | wc -l) QEMU packages"
        (cd "$DEBS" && apt-get download "${APT_OPTS[@]}" $QEMU_PKGS)
        apt-get install -y -q --download-only --no-install-recommends "${APT_OPTS[@]}" qemu-system-x86
    fi
    if [ -n "$(missing_debs $KERNEL_DEB "$BUSYBOX_DEB")" ]; then
        say "downloading $KERNEL_PKG busybox-static"
        (cd "$DEBS" && apt-get download "${APT_OPTS[@]}" $KERNEL_PKG busybox-static)
    fi
    [ -z "$(missing_debs $ALL_DEBS)" ]
}
stage_fetch() {
    resolve_sets
    if ! download_all; then
        # Usually a stale list naming a version the mirror dropped: refresh once and resolve again.
        [ "$APT_UPDATED" = 0 ] || die "packages are missing after a download: $(missing_debs $ALL_DEBS)"
        apt_update "a download failed"
        resolve_sets
        download_all || die "packages are still missing: $(missing_debs $ALL_DEBS)"
    fi
    local f bytes=0
    for f in $ALL_DEBS; do bytes=$((bytes + $(stat -c %s "$DEBS/$f"))); done
    say "$(echo "$QEMU_DEBS" | wc -l) QEMU debs, ${KERNEL_DEB:-no kernel (TESTBED_KERNEL=$KERNEL_IMAGE)}, $BUSYBOX_DEB: $((bytes / 1048576)) MiB in $DEBS"
    # Older versions are never mixed in (every tree is keyed on its .deb names); drop them to bound the cache.
    local keep
    keep=$(printf '%s\n' $ALL_DEBS)
    for f in "$DEBS"/*.deb; do
        [ -e "$f" ] || continue
        # With TESTBED_KERNEL the kernel package is only unused for now: keep it.
        [[ -z $KERNEL_DEB && $f == */linux-image-* ]] && continue
        if ! grep -qxF "$(basename "$f")" <<<"$keep"; then
            say "removing superseded $(basename "$f")"
            rm -f "$f"
        fi
    done
}

# ---- 3. unpack ----------------------------------------------------------------------------------------------
# unpack_tree DIR DEB...: dpkg -x every .deb into DIR unless DIR/.complete says it was done for exactly these.
unpack_tree() {
    local dir=$1 deb
    shift
    if [ -e "$dir/.complete" ]; then
        echo "reusing $dir"
        return 0
    fi
    rm -rf "$dir" "$dir.tmp"
    mkdir -p "$dir.tmp"
    for deb in "$@"; do dpkg -x "$DEBS/$deb" "$dir.tmp"; done
    printf '%s\n' "$@" >"$dir.tmp/.debs"
    touch "$dir.tmp/.complete"
    mv "$dir.tmp" "$dir"
    UNPACKED="$UNPACKED $(basename "$dir")"
}
stage_unpack() {
    local key
    UNPACKED=""
    key=$(echo "$QEMU_DEBS" | sha256sum | cut -c1-12)
    QEMU_ROOT=$CACHE/qemu-$key
    KERNEL_ROOT=$CACHE/kernel-${KERNEL_DEB%.deb}
    [ -n "$KERNEL_DEB" ] || KERNEL_ROOT=$CACHE/kernel-none
    BUSYBOX_ROOT=$CACHE/busybox-${BUSYBOX_DEB%.deb}
    unpack_tree "$QEMU_ROOT" $QEMU_DEBS
    [ -z "$KERNEL_DEB" ] || unpack_tree "$KERNEL_ROOT" "$KERNEL_DEB"
    unpack_tree "$BUSYBOX_ROOT" "$BUSYBOX_DEB"
    # Trees of other versions: never used again (their keys differ), so drop them.
    local d
    for d in "$CACHE"/qemu-* "$CACHE"/kernel-* "$CACHE"/busybox-*; do
        [ -d "$d" ] || continue
        case $d in "$QEMU_ROOT" | "$KERNEL_ROOT" | "$BUSYBOX_ROOT") continue ;; esac
        [[ -z $KERNEL_DEB && $d == "$CACHE"/kernel-* ]] && continue
        say "removing superseded $(basename "$d")"
        rm -rf "$d"
    done
    say "unpacked:${UNPACKED:- nothing (all reused)}"

    BUSYBOX=$BUSYBOX_ROOT/bin/busybox
    [ -x "$BUSYBOX" ] || die "busybox-static has no bin/busybox"
    DEB_VMLINUZ="" DEB_KVER="" DEB_KMODS=""
    if [ -n "$KERNEL_DEB" ]; then
        local vmlinuz
        vmlinuz=$(find "$KERNEL_ROOT/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | sed -n 1p)
        [ -n "$vmlinuz" ] || die "$KERNEL_DEB has no boot/vmlinuz-*"
        DEB_VMLINUZ=$vmlinuz
        DEB_KVER=${vmlinuz##*/vmlinuz-}
        DEB_KMODS=$KERNEL_ROOT/lib/modules/$DEB_KVER
        # The package ships no modules.dep (its postinst makes one): make it with busybox depmod, once.
        if [ ! -s "$DEB_KMODS/modules.dep" ]; then
            "$BUSYBOX" depmod -b "$KERNEL_ROOT" "$DEB_KVER"
            [ -s "$DEB_KMODS/modules.dep" ] || die "busybox depmod made no $DEB_KMODS/modules.dep"
        fi
    fi
    # L2's kernel: VMLINUZ, KVER, KMODS (the L3 stage uses the Debian one's DEB_*).
    if [ -n "$KERNEL_IMAGE" ]; then
        # A custom kernel (the own one, with iommufd) has what the bed needs built in: no modules in the initramfs.
        [ -f "$KERNEL_IMAGE" ] || die "TESTBED_KERNEL=$KERNEL_IMAGE is not a file"
        VMLINUZ=$KERNEL_IMAGE
        KVER=custom
        KMODS=""
    else
        VMLINUZ=$DEB_VMLINUZ
        KVER=$DEB_KVER
        KMODS=$DEB_KMODS
    fi

    QEMU=$QEMU_ROOT/usr/bin/qemu-system-x86_64
    QEMU_LD=$QEMU_ROOT/usr/lib/x86_64-linux-gnu:$QEMU_ROOT/lib/x86_64-linux-gnu
    # Debian's QEMU looks for firmware in /usr/share/qemu, /usr/share/seabios and /usr/lib/ipxe/qemu: point it at
    # the unpacked ones instead (-L may be given more than once; the first match wins).
    QEMU_FW=(-L "$QEMU_ROOT/usr/share/qemu" -L "$QEMU_ROOT/usr/share/seabios" -L "$QEMU_ROOT/usr/lib/ipxe/qemu")
    local missing
    missing=$(LD_LIBRARY_PATH=$QEMU_LD ldd "$QEMU" | awk '/not found/ { print $1 }' | tr '\n' ' ')
    [ -z "$missing" ] || die "the unpacked QEMU lacks libraries: $missing(install them, or report which package apt did not bring)"
    say "$(LD_LIBRARY_PATH=$QEMU_LD "$QEMU" --version | sed -n 1p); L2 kernel $KVER ($VMLINUZ); L3 kernel ${DEB_KVER:-none}; $("$BUSYBOX" 2>&1 | sed -n 1p | cut -d' ' -f1-2)"
}

# ---- 4. refvmm ----------------------------------------------------------------------------------------------
stage_refvmm() {
    REATTACH=""
    if [ -n "$REFVMM_PREBUILT" ]; then
        REFVMM=$REFVMM_PREBUILT
        say "using TESTBED_REFVMM=$REFVMM"
    else
        # A static-pie: the initramfs has no libc. --target keeps RUSTFLAGS off build scripts and proc macros.
        (cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$CARGO_DIR" \
            cargo build --release --target x86_64-unknown-linux-gnu -p refvmm)
        REFVMM=$CARGO_DIR/x86_64-unknown-linux-gnu/release/refvmm
        # vfio-pci's `reattach` example (issue 12: attach, detach, attach again in one process), static the same way.
        (cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$CARGO_DIR" \
            cargo build --release --target x86_64-unknown-linux-gnu -p vfio-pci --example reattach)
        REATTACH=$CARGO_DIR/x86_64-unknown-linux-gnu/release/examples/reattach
    fi
    [ -x "$REFVMM" ] || die "no refvmm binary at $REFVMM"
    if ! ldd "$REFVMM" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
        die "$REFVMM is dynamically linked; build it with RUSTFLAGS='-C target-feature=+crt-static' and --target"
    fi
    say "$REFVMM ($(($(stat -c %s "$REFVMM") / 1024)) KiB, static)"
}

# ---- 5. payload (optional) ----------------------------------------------------------------------------------
stage_payload() {
    PAYLOAD_OUT=$RUN/payload
    mkdir -p "$PAYLOAD_OUT"
    if [ ! -d "$PAYLOAD_DIR" ]; then
        say "no $PAYLOAD_DIR: L2 runs the host-side steps only"
        return 0
    fi
    cp -a "$PAYLOAD_DIR"/. "$PAYLOAD_OUT"/
    if [ -f "$PAYLOAD_DIR/build.sh" ]; then
        say "running $PAYLOAD_DIR/build.sh"
        (cd "$REPO" && TESTBED_PAYLOAD_OUT="$PAYLOAD_OUT" TESTBED_CARGO_TARGET_DIR="$CARGO_DIR" TESTBED_REFVMM="$REFVMM" \
            TESTBED_SERIAL="$SERIAL" TESTBED_PATTERN_LBA="$PATTERN_LBA" bash "$PAYLOAD_DIR/build.sh")
    fi
    [ -z "$REATTACH" ] || cp "$REATTACH" "$PAYLOAD_OUT/reattach"
    # The unprivileged run through handed-in fds (issue 13) needs iommufd and the device cdev: the own kernel's.
    case " $IOMMU_BACKENDS " in
    *" iommufd "*) cp "$HERE/handed-in/run-handed-in.sh" "$PAYLOAD_OUT/" ;;
    *) say "no iommufd in L2 (TESTBED_IOMMU=$IOMMU_BACKENDS): no handed-in-fd run" ;;
    esac
    say "payload: $(cd "$PAYLOAD_OUT" && find . -type f | sed 's|^\./||' | sort | tr '\n' ' ')"
}

# ---- 6. disk image and initramfs ----------------------------------------------------------------------------
# The 512-byte block at PATTERN_LBA: 32 records of 16 ASCII bytes, "LBA=0100 REC=00\n" .. "LBA=0100 REC=31\n".
# Readable in a hex dump, and every record differs, so a block read from the wrong place never matches.
write_pattern() {
    local k
    for k in $(seq 0 31); do printf 'LBA=%04d REC=%02d\n' "$PATTERN_LBA" "$k"; done >"$1"
    [ "$(stat -c %s "$1")" -eq 512 ] || die "pattern block is not 512 bytes (TESTBED_PATTERN_LBA too large?)"
}
stage_disk() {
    DISK=$RUN/nvme.img
    write_pattern "$RUN/pattern.bin"
    truncate -s "${DISK_MIB}M" "$DISK"
    dd if="$RUN/pattern.bin" of="$DISK" bs=512 seek="$PATTERN_LBA" conv=notrunc status=none
    say "$DISK: ${DISK_MIB} MiB raw, LBA $PATTERN_LBA (512-byte blocks) holds the pattern; NVMe serial $SERIAL"
}
module_closure() { # module_closure "MODULE...": the .ko paths (relative to KMODS) and dependencies; built-in ones aside
    awk -v want="$1" -v builtin_file="$KMODS/modules.builtin" '
        function norm(p) { sub(/.*\//, "", p); sub(/\.ko(\.(xz|zst|gz))?$/, "", p); gsub(/-/, "_", p); return p }
        BEGIN { while ((getline line < builtin_file) > 0) builtin[norm(line)] = 1 }
        { key = $1; sub(/:$/, "", key); path[norm(key)] = key; deps[norm(key)] = $0 }
        END {
            n = split(want, w, " ")
            for (i = 1; i <= n; i++) {
                m = w[i]; gsub(/-/, "_", m)
                if (m in builtin) { print "builtin " m; continue }
                if (!(m in path)) { print "missing " m; continue }
                # modules.dep lists every dependency, not only the direct ones.
                k = split(deps[m], d, " ")
                for (j = 1; j <= k; j++) { p = d[j]; sub(/:$/, "", p); if (!(p in seen)) { seen[p] = 1; print "module " p } }
            }
        }' "$KMODS/modules.dep"
}
# copy_modules STAGING "MODULE...": the modules and their dependencies into STAGING/lib/modules, plus a
# modules.dep for them. Sets BUILTIN_MODS (those the kernel has built in) and MODULE_COUNT.
copy_modules() {
    local st=$1 closure missing f
    closure=$(module_closure "$2")
    missing=$(awk '$1 == "missing" { print $2 }' <<<"$closure" | tr '\n' ' ')
    [ -z "$missing" ] || die "kernel $KVER has no module(s): $missing"
    BUILTIN_MODS=$(awk '$1 == "builtin" { print $2 }' <<<"$closure" | tr '\n' ' ')
    MODULE_COUNT=0
    while read -r f; do
        mkdir -p "$st/lib/modules/$KVER/$(dirname "$f")"
        MODULE_COUNT=$((MODULE_COUNT + 1))
        case $f in
        # busybox modprobe may not read compressed modules: decompress at build time (xz, or busybox's own).
        *.ko.xz) if command -v xz >/dev/null; then xz -dc "$KMODS/$f"; else "$BUSYBOX" xz -dc "$KMODS/$f"; fi \
            >"$st/lib/modules/$KVER/${f%.xz}" ;;
        *.ko.zst) zstd -dqc "$KMODS/$f" >"$st/lib/modules/$KVER/${f%.zst}" ;;
        *.ko.gz) gzip -dc "$KMODS/$f" >"$st/lib/modules/$KVER/${f%.gz}" ;;
        *) cp "$KMODS/$f" "$st/lib/modules/$KVER/$f" ;;
        esac
    done < <(awk '$1 == "module" { print $2 }' <<<"$closure")
    cp "$KMODS"/modules.builtin "$KMODS"/modules.order "$st/lib/modules/$KVER/" 2>/dev/null || true
    "$BUSYBOX" depmod -b "$st" "$KVER"
}
# newc_console_node: a cpio (newc) archive holding only the character devices dev/console (5:1) and dev/kmsg
# (1:11), written by hand because making nodes with mknod needs root (and CAP_MKNOD). Appended to an initramfs
# whose own archive has dev/, it lets the kernel open the console for /init, and /init write to the kernel log,
# before /init runs a single command.
newc_console_node() {
    # newc_entry NAME MODE RDEVMAJOR RDEVMINOR NLINK: a header (magic, then 13 hex fields: ino mode uid gid nlink
    # mtime filesize devmajor devminor rdevmajor rdevminor namesize check) and the name with its NUL, padded
    # to a multiple of 4 bytes (no file data follows: size 0).
    newc_entry() {
        local n=$(( ${#1} + 1 ))
        ino=$((ino + 1))
        printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' "$ino" "$2" 0 0 "$5" 0 0 0 0 "$3" "$4" "$n" 0
        printf '%s\0' "$1"
        head -c $(((4 - (110 + n) % 4) % 4)) /dev/zero
    }
    local ino=0
    newc_entry dev/console $((0020600)) 5 1 1 # S_IFCHR | 0600
    newc_entry dev/kmsg $((0020644)) 1 11 1
    newc_entry 'TRAILER!!!' 0 0 0 1
}

# ---- 6b. the L3 Linux passes (issue 10) ---------------------------------------------------------------------
# $RUN/l3 becomes /l3 in L2: L2's own kernel, the L3 initramfs (busybox, the nvme modules, /init from
# l3linux/init.sh.in), QEMU with its shared libraries and the three firmware files it needs for
# `-machine q35 -kernel` (TESTBED.md), and l3linux/passes.sh, which /init runs after the payload.
stage_l3linux() {
    L3_OUT=$RUN/l3
    rm -rf "$L3_OUT"
    if [ -z "$L3_LINUX" ]; then
        say "TESTBED_L3_LINUX is off: no L3 Linux passes"
        [ "$SPEED" = off ] || copy_qemu
        return 0
    fi
    local st=$RUN/l3-initramfs.d f
    # L3 boots the Debian kernel, with L2's own or not: copy_modules reads KVER and KMODS.
    local VMLINUZ=$DEB_VMLINUZ KVER=$DEB_KVER KMODS=$DEB_KMODS
    mkdir -p "$L3_OUT" "$st"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,lib/modules/"$KVER"}
    cp "$VMLINUZ" "$L3_OUT/vmlinuz"
    cp "$HERE/l3linux/passes.sh" "$L3_OUT/passes.sh"
    # The L3 initramfs: busybox, nvme and its dependencies, /init.
    cp "$BUSYBOX" "$st/bin/busybox"
    "$BUSYBOX" --list-full | while read -r f; do
        [ "$f" = bin/busybox ] || [ -e "$st/$f" ] || ln -s /bin/busybox "$st/$f"
    done
    local count=0
    if [ -n "$KMODS" ]; then
        copy_modules "$st" nvme
        count=$MODULE_COUNT
    fi
    sed -e "s|@NVME_ID@|$NVME_ID|" -e "s|@NVME_SERIAL@|$SERIAL|" \
        -e "s|@PATTERN_LBA@|$PATTERN_LBA|" -e "s|@L3_CPUS@|$L3_CPUS|" -e "s|@L3_IOS@|$L3_IOS|" \
        "$HERE/l3linux/init.sh.in" >"$st/init"
    chmod 755 "$st/init"
    ! grep -n '@[A-Z_]*@' "$st/init" || die "l3linux/init.sh.in has a token run.sh does not fill in"
    newc_console_node >"$RUN/console.cpio"
    [ $(($(stat -c %s "$RUN/console.cpio") % 4)) -eq 0 ] || die "the hand-made dev/console cpio is not 4-byte aligned"
    (cd "$st" && find . | sort | "$BUSYBOX" cpio -o -H newc | cat - "$RUN/console.cpio" | gzip -9 >"$L3_OUT/initramfs.cpio.gz")
    say "L3: $L3_OUT/initramfs.cpio.gz $(($(stat -c %s "$L3_OUT/initramfs.cpio.gz") / 1024)) KiB ($count modules for nvme), kernel $KVER"
    case " $L3_LINUX " in *" qemu "*) ;; *) [ "$SPEED" = on ] || return 0 ;; esac
    copy_qemu
}
# copy_qemu: QEMU for the qemu pass and the speed pass, in $L3_OUT/qemu: the binary, every library ldd resolves
# (from the unpacked tree or this host: the host is bookworm too), the loader, and the firmware.
copy_qemu() {
    local f lib
    mkdir -p "$L3_OUT/qemu"/{bin,lib,share}
    cp "$QEMU" "$L3_OUT/qemu/bin/"
    LD_LIBRARY_PATH=$QEMU_LD ldd "$QEMU" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\/.*ld-linux/ { print $1 }' >"$RUN/qemu-libs"
    while read -r lib; do cp -L "$lib" "$L3_OUT/qemu/lib/"; done <"$RUN/qemu-libs"
    [ -e "$L3_OUT/qemu/lib/ld-linux-x86-64.so.2" ] || die "ldd named no ld-linux-x86-64.so.2 for $QEMU"
    for f in bios-256k.bin linuxboot_dma.bin kvmvapic.bin; do
        lib=$(find "$QEMU_ROOT/usr/share/qemu/" "$QEMU_ROOT/usr/share/seabios/" -name "$f" | sed -n 1p)
        [ -n "$lib" ] || die "no $f in the unpacked QEMU packages"
        cp -L "$lib" "$L3_OUT/qemu/share/"
    done
    say "L3: QEMU with $(wc -l <"$RUN/qemu-libs") libraries and 3 firmware files: $(du -sk "$L3_OUT/qemu" | cut -f1) KiB"
}

# ---- 6c. the speed pass (issue 15) ----------------------------------------------------------------------------
# $RUN/speed becomes /speed in L2: speed/speed.sh, the meter and L2's BAR-store helper (static C: the initramfs
# has no libc), and the L3 guest bar_stores (tests/guests, built by the payload stage's tests/guests/build.sh).
stage_speed() {
    SPEED_OUT=$RUN/speed
    rm -rf "$SPEED_OUT"
    if [ "$SPEED" = off ]; then
        say "TESTBED_SPEED is off: no speed pass"
        return 0
    fi
    mkdir -p "$SPEED_OUT"
    local cc=${CC:-cc} t
    command -v "$cc" >/dev/null || die "no C compiler ($cc) for speed/vmmeter.c and speed/barstores.c (gcc and libc6-dev)"
    for t in vmmeter barstores; do
        "$cc" -static -O2 -Wall -Wextra -Werror -o "$SPEED_OUT/$t" "$HERE/speed/$t.c"
    done
    cp "$HERE/speed/speed.sh" "$SPEED_OUT/"
    local guest=${TESTBED_GUESTS_TARGET_DIR:-$REPO/target/guests}/release/bar_stores
    if [ -f "$guest" ]; then
        cp "$guest" "$SPEED_OUT/bar_stores.elf"
    else
        say "no $guest: the guest side of the BAR-store comparison is skipped"
    fi
    say "speed pass: sizes $SPEED_SIZES, ivshmem BAR ${SPEED_BAR_MIB} MiB, ${SPEED_STORE_MIB} MiB of stores; L2 RAM $MEM; $(find "$SPEED_OUT" -type f -printf '%f ')"
}

stage_initramfs() {
    local st=$RUN/initramfs.d f
    rm -rf "$st"
    mkdir -p "$st"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc/testbed,payload,lib/modules/"$KVER"}
    # busybox and its applet links
    cp "$BUSYBOX" "$st/bin/busybox"
    "$BUSYBOX" --list-full | while read -r f; do
        [ "$f" = bin/busybox ] || [ -e "$st/$f" ] || ln -s /bin/busybox "$st/$f"
    done
    # modules
    if [ -n "$KMODS" ]; then
        copy_modules "$st" "$MODULES"
    else
        # The own kernel has the rest built in, and no network driver: nothing in the bed uses the e1000e, so
        # /init neither loads it nor calls it built in.
        MODULES=${MODULES/e1000e /}
        BUILTIN_MODS=$MODULES
        MODULE_COUNT=0
    fi
    # refvmm, the expected pattern block, the payload
    cp "$REFVMM" "$st/bin/refvmm"
    cp "$RUN/pattern.bin" "$st/etc/testbed/pattern.bin"
    cp "$HERE/steps.sh" "$st/etc/testbed/steps.sh" # the step reporting the L2 scripts source
    cp -a "$PAYLOAD_OUT"/. "$st/payload/"
    [ ! -d "$SPEED_OUT" ] || cp -a "$SPEED_OUT" "$st/speed"
    # The L3 Linux passes; QEMU's dynamic loader where its binary looks for it (TESTBED.md).
    if [ -d "$L3_OUT" ]; then
        cp -a "$L3_OUT" "$st/l3"
        if [ -d "$L3_OUT/qemu" ]; then
            mkdir -p "$st/lib64"
            ln -s /l3/qemu/lib/ld-linux-x86-64.so.2 "$st/lib64/ld-linux-x86-64.so.2"
        fi
    fi
    # /init from the template
    sed -e "s|@KVER@|$KVER|" -e "s|@NVME_BDF@|$NVME_BDF|" -e "s|@NVME_ID@|$NVME_ID|" \
        -e "s|@NVME_SERIAL@|$SERIAL|" -e "s|@PATTERN_LBA@|$PATTERN_LBA|" -e "s|@MODULES@|$MODULES|" \
        -e "s|@BUILTIN@|${BUILTIN_MODS% }|" -e "s|@HOST_TOOL@|$HOST_TOOL|" -e "s|@INTERACTIVE@|$INTERACTIVE|" \
        -e "s|@RUST_LOG@|$RUST_LOG_L2|" -e "s|@KVM_AMD_OPTS@|$KVM_AMD_OPTS|" -e "s|@L3_PASSES@|$L3_LINUX|" \
        -e "s|@L3_MEM_MIB@|$L3_MEM_MIB|" -e "s|@L3_CPUS@|$L3_CPUS|" -e "s|@L3_IOS@|$L3_IOS|" \
        -e "s|@L3_TIMEOUT@|$L3_TIMEOUT|" -e "s|@L3_APPEND@|$L3_APPEND|" -e "s|@L3_REFVMM_ARGS@|$L3_REFVMM_ARGS|" \
        -e "s|@L3_IOMMU@|$IOMMU_BACKENDS|" \
        -e "s|@SPEED_SIZES@|$SPEED_SIZES|" -e "s|@SPEED_STORE_MIB@|$SPEED_STORE_MIB|" \
        -e "s|@SPEED_PREFAULT@|$SPEED_PREFAULT|" "$HERE/init.sh.in" >"$st/init"
    chmod 755 "$st/init"
    ! grep -n '@[A-Z_]*@' "$st/init" || die "init.sh.in has a token run.sh does not fill in"
    # Not compressed: with QEMU and its libraries it is ~110 MB, and inflating gzip in L2 under TCG took 7 s of
    # the 10 s to /init on a busy machine; reading a plain cpio is a copy.
    INITRD=$RUN/initramfs.cpio
    (cd "$st" && find . | sort | "$BUSYBOX" cpio -o -H newc >"$INITRD")
    say "$INITRD: $(($(stat -c %s "$INITRD") / 1024)) KiB; $MODULE_COUNT modules (built in: ${BUILTIN_MODS:-none})"
}

# ---- 7. boot L2 ---------------------------------------------------------------------------------------------
# The log classifiers (STALL_RE, PANIC_RE, switch_panic) are in l2log.sh, with a self-test (l2log-selftest.sh).
# shellcheck source-path=SCRIPTDIR source=l2log.sh
source "$HERE/l2log.sh"
qemu_cmd() { # the command line from TESTBED.md, with the unpacked firmware
    # no_timer_check: Linux's boot-time check that the timer interrupt arrives through the IOAPIC waits a
    # calibrated delay, which TCG on a loaded host can exceed ("Kernel panic - not syncing: timer doesn't work
    # through Interrupt-remapped IO-APIC", seen at a load average of 12 on 2 cores). The option skips the check.
    local append="console=ttyS0 intel_iommu=on iommu=pt panic=-1 no_timer_check $APPEND_EXTRA" serial=stdio
    [ "$INTERACTIVE" = 1 ] && serial=mon:stdio
    # shellcheck disable=SC2054,SC2206 # the commas are QEMU's option syntax; QEMU_EXTRA is word-split on purpose
    QEMU_CMD=("$QEMU" "${QEMU_FW[@]}"
        -machine q35 -accel tcg -cpu max -smp "$SMP" -m "$MEM"
        -device intel-iommu,intremap=on,caching-mode=on
        -drive "file=$DISK,if=none,id=n0,format=raw" -device "nvme,drive=n0,serial=$SERIAL"
        -device e1000e,netdev=u0 -netdev user,id=u0
        -kernel "$VMLINUZ" -initrd "$INITRD" -append "${append% }"
        -nographic -no-reboot -nodefaults -serial "$serial" $QEMU_EXTRA)
    # The speed pass's large BAR (issue 15): ivshmem-plain's BAR2 is 64-bit prefetchable, as large as its memory
    # backend, and backed by this QEMU's RAM; L2 binds it to vfio-pci and finds it by its ID, 1af4:1110.
    # shellcheck disable=SC2054 # the commas are QEMU's option syntax
    [ "$SPEED" = off ] || QEMU_CMD+=(-object "memory-backend-ram,id=hm,size=${SPEED_BAR_MIB}M" -device ivshmem-plain,memdev=hm)
}
# boot_once N: one L2 boot; sets BOOT_OUTCOME to exited|timeout|stall|quiet|reset|switchpanic|nopoweroff, and
# BOOT_LOG.
boot_once() {
    local n=$1 pid rc=0 t0 t_init="" t_result="" size=-1 t_size
    BOOT_LOG=$RUN/serial-$n.log
    echo "$BOOT_LOG" >"$RUN/.progress" # the heartbeat shows L2's last console line
    t0=$EPOCHREALTIME
    t_size=$t0
    LD_LIBRARY_PATH=$QEMU_LD timeout -k 10 "$TIMEOUT" "${QEMU_CMD[@]}" </dev/null >"$BOOT_LOG" 2>&1 &
    pid=$!
    BOOT_OUTCOME=exited
    while kill -0 "$pid" 2>/dev/null; do
        sleep 0.5
        # Silence: a normal run prints at least every few seconds (the L3 runs stream their output). Nested KVM
        # under TCG sometimes freezes L2 without even an RCU stall report; do not wait for TESTBED_TIMEOUT then.
        if [ "$(stat -c %s "$BOOT_LOG")" != "$size" ]; then
            size=$(stat -c %s "$BOOT_LOG")
            t_size=$EPOCHREALTIME
        elif [ "$QUIET" -gt 0 ] && [ -z "$t_result" ] && [ "$(since "$t_size" | cut -d. -f1)" -ge "$QUIET" ]; then
            BOOT_OUTCOME=quiet
            kill -TERM "$pid" 2>/dev/null || true
            break
        fi
        if [ -z "$t_init" ] && grep -q '^TESTBED: INIT' "$BOOT_LOG"; then
            t_init=$(since "$t0")
            say "attempt $n: /init started ${t_init}s after QEMU"
        fi
        if [ -z "$t_result" ] && grep -q '^TESTBED: RESULT' "$BOOT_LOG"; then
            t_result=$EPOCHREALTIME
        fi
        if grep -aqE "$STALL_RE" "$BOOT_LOG"; then
            BOOT_OUTCOME=stall
            kill -TERM "$pid" 2>/dev/null || true
            break
        fi
        # The verdict is in but L2 did not power off: stop it rather than waiting for the timeout.
        if [ -n "$t_result" ] && [ "$(since "$t_result" | cut -d. -f1)" -ge 20 ]; then
            BOOT_OUTCOME=nopoweroff
            kill -TERM "$pid" 2>/dev/null || true
            break
        fi
    done
    wait "$pid" || rc=$?
    [ "$rc" -eq 124 ] && [ "$BOOT_OUTCOME" = exited ] && BOOT_OUTCOME=timeout
    # QEMU runs with -no-reboot, so L2 resetting itself ends QEMU like a power-off. /init powers off only after its
    # RESULT line; without that line and without a kernel panic, L2 was reset under it (nested SVM under TCG has
    # done that during an L3 run): a broken boot, like a hang, not a verdict.
    if [ "$BOOT_OUTCOME" = exited ] && [ -z "$t_result" ] && ! grep -aq '^TESTBED: RESULT' "$BOOT_LOG" &&
        ! grep -aqE "$PANIC_RE" "$BOOT_LOG"; then
        BOOT_OUTCOME=reset
    fi
    if [ "$BOOT_OUTCOME" = exited ] && grep -aqE "$PANIC_RE" "$BOOT_LOG" && switch_panic "$BOOT_LOG"; then
        BOOT_OUTCOME=switchpanic
    fi
    say "attempt $n: QEMU ended ($BOOT_OUTCOME, exit $rc) after $(since "$t0")s; serial log $BOOT_LOG"
}
stage_boot() {
    qemu_cmd
    printf 'LD_LIBRARY_PATH=%q ' "$QEMU_LD" >"$RUN/qemu-cmd.sh"
    printf '%q ' timeout "$TIMEOUT" "${QEMU_CMD[@]}" >>"$RUN/qemu-cmd.sh"
    echo >>"$RUN/qemu-cmd.sh"
    cat "$RUN/qemu-cmd.sh"
    if [ "$INTERACTIVE" = 1 ]; then
        BOOT_LOG=$RUN/serial-1.log
        say "interactive: L2's console follows (Ctrl-A X quits QEMU); also logged to $BOOT_LOG"
        LD_LIBRARY_PATH=$QEMU_LD timeout "$TIMEOUT" "${QEMU_CMD[@]}" 2>&1 | tee "$BOOT_LOG" >&3 || true
        BOOT_OUTCOME=exited
        return 0
    fi
    local n=1
    while :; do
        boot_once "$n"
        case $BOOT_OUTCOME in
        timeout | stall | quiet | reset | switchpanic)
            if [ "$n" -le "$RETRIES" ]; then
                local why=$BOOT_OUTCOME
                [ "$why" = stall ] && why="RCU stall in L2: $(grep -aE -m 1 "$STALL_RE" "$BOOT_LOG" | tr -d '\r')"
                [ "$why" = reset ] && why="L2 reset itself before its RESULT line, no kernel panic; last: $(grep -av '^ *$' "$BOOT_LOG" | tail -n 1 | tr -d '\r' | cut -c1-120)"
                [ "$why" = switchpanic ] && why="L2's kernel panicked on an interrupt taken inside KVM's world switch (the emulator's SVM; see switch_panic): $(grep -aE -m 1 "$PANIC_RE" "$BOOT_LOG" | tr -d '\r')"
                [ "$why" = quiet ] && why="no serial output for ${QUIET}s, last: $(grep -av '^ *$' "$BOOT_LOG" | tail -n 1 | tr -d '\r' | cut -c1-120)"
                say "attempt $n broke ($why): booting again"
                n=$((n + 1))
                continue
            fi
            ;;
        esac
        break
    done
}

# ---- 8. verdict ---------------------------------------------------------------------------------------------
stage_verify() {
    local steps fails result line
    steps=$(grep -a '^TESTBED: STEP ' "$BOOT_LOG" | tr -d '\r' || true)
    if [ -n "$steps" ]; then
        printf '%s\n' "${steps//TESTBED: STEP /    }" >&3
    fi
    grep -a '^TESTBED: NOTE ' "$BOOT_LOG" | tr -d '\r' | sed 's/^TESTBED: /    /' >&3 || true
    fails=$(grep -c ' FAIL ' <<<"$steps" || true)
    result=$(grep -a '^TESTBED: RESULT ' "$BOOT_LOG" | tr -d '\r' | tail -n 1 || true)
    say "${result:-no RESULT line}"
    # The L3 Linux passes: their blocks in the image, and QEMU and refvmm side by side. Printed before any verdict,
    # so a failing pass still shows its numbers.
    local compare_rc=0
    if [ -n "$L3_LINUX" ] && grep -aq '^TESTBED: L3LINUX ' "$BOOT_LOG"; then
        say "running $HERE/l3linux/compare.sh"
        TESTBED_DISK="$DISK" TESTBED_LOG="$BOOT_LOG" TESTBED_PATTERN_LBA="$PATTERN_LBA" TESTBED_L3_LINUX="$L3_LINUX" \
            bash "$HERE/l3linux/compare.sh" >"$RUN/l3linux-compare.txt" 2>&1 || compare_rc=$?
        cat "$RUN/l3linux-compare.txt"
        sed 's/^/    /' "$RUN/l3linux-compare.txt" >&3
    fi
    # The speed pass (issue 15): the side-by-side start-up and large-BAR tables; reported, never a verdict.
    if grep -aq '^TESTBED: SPEED ' "$BOOT_LOG"; then
        say "running $HERE/speed/compare.sh"
        TESTBED_LOG="$BOOT_LOG" bash "$HERE/speed/compare.sh" >"$RUN/speed-compare.txt" 2>&1 || true
        cat "$RUN/speed-compare.txt"
        sed 's/^/    /' "$RUN/speed-compare.txt" >&3
    fi
    case $BOOT_OUTCOME in
    timeout) die "L2 did not finish within TESTBED_TIMEOUT=${TIMEOUT}s (last lines: tail $BOOT_LOG)" ;;
    stall) die "L2 hit an RCU stall or soft lockup on every attempt (see $BOOT_LOG)" ;;
    quiet) die "L2 went silent for TESTBED_QUIET_TIMEOUT=${QUIET}s on every attempt (see $BOOT_LOG)" ;;
    reset) die "L2 reset itself before its RESULT line on every attempt (see $BOOT_LOG)" ;;
    switchpanic) die "L2's kernel panicked on an interrupt inside KVM's world switch on every attempt (see $BOOT_LOG)" ;;
    esac
    grep -aqE "$PANIC_RE" "$BOOT_LOG" && die "L2 kernel panic: $(grep -aE -m 1 "$PANIC_RE" "$BOOT_LOG" | tr -d '\r')"
    [ -n "$result" ] || die "L2 printed no RESULT line (see $BOOT_LOG)"
    [ "$fails" -eq 0 ] || die "$fails step(s) failed (see $BOOT_LOG)"
    [[ $result == "TESTBED: RESULT PASS"* ]] || die "L2 says: $result"
    [ "$BOOT_OUTCOME" = exited ] || say "warning: L2 did not power off by itself after its verdict"
    if [ -f "$PAYLOAD_DIR/post-check.sh" ]; then
        say "running $PAYLOAD_DIR/post-check.sh"
        # Its output (the image check, the comparison table) goes to the stage log and to the terminal.
        TESTBED_DISK="$DISK" TESTBED_LOG="$BOOT_LOG" TESTBED_SERIAL="$SERIAL" TESTBED_PATTERN_LBA="$PATTERN_LBA" \
            TESTBED_OTHER_LBAS="$L3_LBAS" TESTBED_IOMMU="$IOMMU_BACKENDS" bash "$PAYLOAD_DIR/post-check.sh" 2>&1 | while IFS= read -r line; do
            printf '%s\n' "$line"
            printf '    %s\n' "$line" >&3
        done
    fi
    [ "$compare_rc" -eq 0 ] || die "the L3 Linux passes' blocks are not in the disk image (see the l3linux lines above)"
}

stage "apt lists" stage_apt_lists
stage "L2 kernel" stage_own_kernel
stage "fetch packages" stage_fetch
stage "unpack" stage_unpack
stage "build refvmm" stage_refvmm
stage "payload" stage_payload
stage "disk image" stage_disk
stage "L3 Linux" stage_l3linux
stage "speed pass" stage_speed
stage "initramfs" stage_initramfs
stage "boot L2" stage_boot
[ "$INTERACTIVE" = 1 ] && { printf 'testbed: interactive run over after %ss; log %s\n' "$(since "$T0")" "$BOOT_LOG" >&3; exit 0; }

stage "verdict" stage_verify
if [ "$KEEP" != 1 ]; then
    rm -rf "$DISK" "$INITRD" "$RUN/initramfs.d" "$RUN/l3" "$RUN/l3-initramfs.d"
fi
printf '\nTESTBED PASS in %ss; serial log %s\n' "$(since "$T0")" "$BOOT_LOG" >&3
