#!/bin/sh
# shellcheck disable=SC2016,SC2086,SC2046 # awk programs in single quotes; lists and key=value pairs are word-split on purpose
# The speed pass of issue 15, run by L2's /init (busybox sh) after the payload and the L3 Linux passes: refvmm
# and QEMU side by side, measured by one meter (/speed/vmmeter: the VMM's KVM VM file descriptor appearing and
# the VM's `exits` statistic in KVM's debugfs first becoming non-zero, on L2's clock), never by the VMMs themselves.
#
#   start-up   for each guest RAM size in SPEED_SIZES, with the NVMe passed through (type1 container):
#                refvmm run --memory SIZE --device NVME                          (default backing: thp)
#                refvmm run --memory SIZE --memory-backing hugetlb --device NVME
#                qemu -m SIZE -device vfio-pci,host=NVME                          (default: anonymous RAM)
#                qemu -m SIZE -object memory-backend-file,mem-path=/dev/hugepages,prealloc=on ...
#              the start to the first guest exit (the first instruction), and each VMM's own split (refvmm's
#              `start-up:` line; QEMU's trace of its DMA maps)
#   large BAR  the same with QEMU's ivshmem-plain (a 64-bit prefetchable BAR2, TESTBED_SPEED_BAR_MIB, backed by L1's
#              RAM) instead of the NVMe: when the BAR is mapped into the guest, by the same meter
#   stores     the L3 guest bar_stores (tests/guests) storing into that BAR under refvmm, against L2's own
#              stores into the VFIO mmap of the same BAR (/speed/barstores): the rate ratio and KVM's exits
#
# Timing figures are reported (`TESTBED: SPEED ...` lines, turned into a table by speed/compare.sh on the host),
# never enforced: a step FAILs only when a VMM did not start its guest, a tool is missing, or a check that does
# not depend on speed (zero MMIO exits while the guest stores into a mapped BAR) does not hold.
#
# Environment from /init: NVME_BDF, SPEED_SIZES (e.g. "256M 512M 1G"), SPEED_BAR_ID (1af4:1110),
# SPEED_STORE_MIB (MiB of warm stores per side), SPEED_PREFAULT (optional: extra refvmm thp runs with these
# --prefault-threads counts, to see what its prefault threads cost). Exit status: the number of failed steps.
set -u
: "${NVME_BDF:?set by /init}" "${SPEED_SIZES:?}" "${SPEED_BAR_ID:?}" "${SPEED_STORE_MIB:?}" "${SPEED_PREFAULT=}"

HERE=/speed
METER=$HERE/vmmeter
QEMU_DIR=/l3/qemu
KVMDBG=/sys/kernel/debug/kvm
# Seconds per VMM run (the meter kills it): a start-up takes 1-8 s under TCG. Below run.sh's
# TESTBED_QUIET_TIMEOUT (60 s), so a stuck run is this step's failure, not a silent L2.
RUN_TIMEOUT=45

. /etc/testbed/steps.sh # step, note, uptime_s, driver_of; FAILS
# bind_vfio BDF: onto vfio-pci through driver_override, as /init's sysfs tool does; 0 when it is there.
bind_vfio() {
    [ "$(driver_of "$1")" = vfio-pci ] && return 0
    echo vfio-pci >"/sys/bus/pci/devices/$1/driver_override"
    [ -e "/sys/bus/pci/devices/$1/driver" ] && echo "$1" >"/sys/bus/pci/devices/$1/driver/unbind"
    echo "$1" >/sys/bus/pci/drivers_probe
    [ "$(driver_of "$1")" = vfio-pci ]
}
# find_by_id VENDOR:DEVICE: the first function with those IDs (not a fixed address).
find_by_id() {
    for _d in /sys/bus/pci/devices/*; do
        [ "$(sed 's/^0x//' "$_d/vendor"):$(sed 's/^0x//' "$_d/device")" = "$1" ] && { basename "$_d"; return 0; }
    done
    return 1
}
mib_of() { # 256M, 1G, 512 -> MiB
    case $1 in
    *G) echo $((${1%G} * 1024)) ;;
    *M) echo "${1%M}" ;;
    *) echo "$1" ;;
    esac
}
# meter FILE KEY: KEY=value from the METER lines of a run's output (the last one).
meter() { sed -n "s/^METER .* $2=\([^ ]*\).*/\1/p" "$1" | tail -n 1; }
meter_line() { sed -n "s/^METER $2 //p" "$1" | tail -n 1; }
after_of() { meter_line "$1" "$2" | sed -n 's/.*after=\([0-9.]*\).*/\1/p'; }

# ---- the runs -----------------------------------------------------------------------------------------------
# measure NAME [METER OPTIONS] -- VMM...: one VMM run under the meter, its output in /tmp/speed-NAME.out and on
# the console as it comes (indented: run.sh sees a live L2); sets FIRST (seconds from start to the first exit,
# empty when none), VMC and STATUS (the VMM's exit status, from the meter's end line).
measure() {
    _n=$1
    shift
    _out=/tmp/speed-$_n.out
    echo "  \$ vmmeter $*"
    "$METER" "$@" </dev/null 2>&1 | tee "$_out" | sed 's/^/  /'
    STATUS=$(sed -n 's/^METER end status=\([0-9]*\).*/\1/p' "$_out")
    STATUS=${STATUS:-none}
    FIRST=$(after_of "$_out" first-exit)
    VMC=$(after_of "$_out" vm-created)
}
# refvmm's own split, from its `refvmm: start-up: guest RAM N MiB (B, T prefault threads) X s, devices Y s (DMA
# map Z s), first instruction at W s` line: "X Y Z W".
refvmm_split() {
    sed -n 's/.*refvmm: start-up: guest RAM [0-9]* MiB ([^)]*) \([0-9.]*\) s, devices \([0-9.]*\) s (DMA map \([0-9.]*\) s), first instruction at \([0-9.]*\) s.*/\1 \2 \3 \4/p' "$1" | head -n 1
}
# qemu_dma_map TRACE: from QEMU's trace of a run (-msg timestamp=on: `PID@SECONDS.USEC:event ...`, the wall
# clock), the seconds from its first vfio_listener_region_add_ram (the DMA map of guest RAM starts) to
# vfio_get_device (QEMU 7.2's vfio_realize maps all RAM in vfio_get_group, before it gets the device fd), or
# nothing.
qemu_dma_map() {
    awk -F'[@: ]' '/:vfio_listener_region_add_ram/ && !a { a = $2 } /:vfio_get_device/ && a && !g { g = $2 }
        END { if (a && g) printf "%.3f", g - a }' "$1"
}
# qemu_bar_mapped TRACE WALL0 GPA-HEX: seconds from the start (wall clock WALL0) to QEMU's KVM memory slot for the
# BAR at guest address GPA (kvm_set_user_memory, after the vfio listener's DMA map of the same range), and the
# DMA map of the BAR itself (from vfio_listener_region_add_ram for that address to the slot): "SINCE-START MAP".
qemu_bar_mapped() {
    awk -F'[@: ]' -v w="$2" -v gpa="$3" '
        /:vfio_listener_region_add_ram/ && index($0, gpa) && !a { a = $2 }
        /:kvm_set_user_memory/ && a && index($0, gpa) && !k { k = $2 }
        END { if (a && k) printf "%.3f %.3f", k - w, k - a }' "$1"
}

QEMU_BASE="-L $QEMU_DIR/share -machine q35,accel=kvm -cpu host -nodefaults -display none -monitor none -serial null -msg timestamp=on"
# run_pair SIZE BACKING (default|hugetlb) DEVICE-BDF LABEL: one refvmm run and one QEMU run, same RAM and device.
run_pair() {
    _size=$1 _back=$2 _bdf=$3 _label=$4
    _mib=$(mib_of "$_size")
    # refvmm: its built-in guest lists the bus and reports status 0 (the first instruction is its first port
    # write); --iommu type1, the container QEMU 7.2 uses.
    _rb=thp
    [ "$_back" = hugetlb ] && _rb=hugetlb
    _name=refvmm-$_rb-$_mib-$_label
    measure "$_name" --timeout "$RUN_TIMEOUT" -- refvmm run --memory "$_size" --memory-backing "$_rb" \
        --device "$_bdf" --iommu type1 --show-mtree
    _split=$(refvmm_split "/tmp/speed-$_name.out")
    # --show-mtree's "Host pages behind each memory slot": guest RAM's (the first slot that is not a BAR), e.g.
    # "pages=4K thp=1G rss=1G": whether THP or hugetlb pages really back it.
    _ram=$(sed -n 's/^  | //p' "/tmp/speed-$_name.out" | grep ' in slot ' | grep -v BAR | head -n 1 |
        sed -n 's/.* \(pages=.*\) "[^"]*"$/\1/p' | tr ' ' ',')
    _rextra=" ram-pages=${_ram:-?}"
    if [ "$_label" = ivshmem ]; then
        # --show-mtree's "Host pages behind each memory slot" line of BAR2: its guest range and host pages.
        _slot=$(sed -n 's/^  | //p' "/tmp/speed-$_name.out" | grep ' in slot .*BAR2' | head -n 1)
        _rextra="$_rextra bar-gpa=$(echo "$_slot" | awk '{ sub(/-.*/, "", $1); print $1 }') bar-pages=$(echo "$_slot" | sed -n 's/.* \(pages=[^ ]*\).*/\1/p')"
    fi
    set -- $_split
    echo "TESTBED: SPEED vmm=refvmm backing=$_rb mib=$_mib device=$_label status=$STATUS vm-created=${VMC:-?} first-exit=${FIRST:-?} ram=${1:-?} devices=${2:-?} dma-map=${3:-?} self-first=${4:-?}$_rextra"
    if [ -n "$FIRST" ] && [ "$STATUS" = 0 ]; then
        step "speed-$_name" OK "first guest exit ${FIRST}s after start (KVM debugfs); refvmm's own: RAM ${1:-?}s, devices ${2:-?}s (DMA map ${3:-?}s), first instruction at ${4:-?}s"
    else
        step "speed-$_name" FAIL "refvmm exit $STATUS, first exit '${FIRST:-none}' (output above)"
    fi
    # QEMU: SeaBIOS is its first code; it is stopped 0.3 s after the first exit (the NVMe) or once SeaBIOS has
    # mapped the BARs and looks for a boot device (ivshmem: its debug console on port 0x402 says so).
    _qb=anon
    _qargs="-m $_size"
    if [ "$_back" = hugetlb ]; then
        _qb=hugetlb
        _qargs="-m $_size -object memory-backend-file,id=ram0,size=$_size,mem-path=/dev/hugepages,prealloc=on -machine memory-backend=ram0"
    fi
    _name=qemu-$_qb-$_mib-$_label
    _stop="--stop-after 0.3"
    _dbg=""
    if [ "$_label" = ivshmem ]; then
        _stop="--stop-on bootable" # "No bootable device."
        _dbg="-chardev stdio,id=dbg -device isa-debugcon,iobase=0x402,chardev=dbg"
    fi
    rm -f /tmp/speed-qemu.trace
    # shellcheck disable=SC2086 # QEMU's arguments are separate words
    measure "$_name" --timeout "$RUN_TIMEOUT" $_stop -- \
        "$QEMU_DIR/bin/qemu-system-x86_64" $QEMU_BASE $_qargs $_dbg -device "vfio-pci,host=$_bdf" \
        -D /tmp/speed-qemu.trace -trace vfio_listener_region_add_ram -trace vfio_get_device -trace kvm_set_user_memory
    _dma=$(qemu_dma_map /tmp/speed-qemu.trace)
    _extra=""
    if [ "$_label" = ivshmem ]; then
        # The BAR's guest address, from SeaBIOS's "PCI: map device bdf=00:02.0  bar 2, addr 800000000, size ...".
        _gpa=$(sed -n 's/.*PCI: map device .* bar 2, addr 0*\([0-9a-f]*\), size.*/\1/p' "/tmp/speed-$_name.out" | head -n 1)
        _bm=$(qemu_bar_mapped /tmp/speed-qemu.trace "$(meter "/tmp/speed-$_name.out" wall)" "0x$_gpa")
        set -- $_bm
        _extra=" bar-gpa=0x${_gpa:-?} bar-mapped=${1:-?} bar-dma-map=${2:-?}"
        cp /tmp/speed-qemu.trace "/tmp/speed-$_name.trace"
    fi
    # QEMU ends on the meter's SIGTERM: "terminating on signal 15", exit 0.
    echo "TESTBED: SPEED vmm=qemu backing=$_qb mib=$_mib device=$_label status=$STATUS vm-created=${VMC:-?} first-exit=${FIRST:-?} dma-map=${_dma:-?}$_extra"
    if [ -n "$FIRST" ] && [ "$STATUS" = 0 ]; then
        step "speed-$_name" OK "first guest exit ${FIRST}s after start (KVM debugfs); QEMU's DMA map of guest RAM (its trace) ${_dma:-?}s$_extra"
    else
        step "speed-$_name" FAIL "QEMU exit $STATUS, first exit '${FIRST:-none}' (output above)"
    fi
}

# hugepages N: reserve N 2 MiB pages (0: release them); 0 when the kernel has them all.
hugepages() {
    echo "$1" >/proc/sys/vm/nr_hugepages 2>/dev/null || return 1
    [ "$(cat /proc/sys/vm/nr_hugepages)" -eq "$1" ]
}

# ---- set-up -------------------------------------------------------------------------------------------------
# L2 sometimes goes silent while a VM starts (README.md, "The speed pass"): if a task is stuck in the kernel rather
# than a vCPU frozen, the kernel names it and prints its stack after 20 s (the default, 120 s, is past run.sh's
# 60 s silence limit), so the serial log shows where.
echo 20 >/proc/sys/kernel/hung_task_timeout_secs 2>/dev/null
grep -q ' /sys/kernel/debug ' /proc/mounts || mount -t debugfs none /sys/kernel/debug
if [ ! -d "$KVMDBG" ] || [ ! -x "$METER" ]; then
    step speed-meter FAIL "no $KVMDBG (debugfs) or no $METER: no meter"
    exit 1
fi
HAVE_QEMU=1
[ -x "$QEMU_DIR/bin/qemu-system-x86_64" ] || HAVE_QEMU=0
bind_vfio "$NVME_BDF" || { step speed-nvme FAIL "$NVME_BDF is on '$(driver_of "$NVME_BDF")', not vfio-pci"; exit 1; }
BAR_BDF=$(find_by_id "$SPEED_BAR_ID")
HUGE=1
[ -w /proc/sys/vm/nr_hugepages ] || HUGE=0
if [ "$HUGE" = 1 ]; then
    mkdir -p /dev/hugepages
    grep -q ' /dev/hugepages ' /proc/mounts || mount -t hugetlbfs none /dev/hugepages || HUGE=0
fi
THP=$(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo "none (no CONFIG_TRANSPARENT_HUGEPAGE)")
note "speed pass: sizes $SPEED_SIZES; NVMe $NVME_BDF; large BAR ${BAR_BDF:-none} ($SPEED_BAR_ID); THP: $THP; hugetlbfs: $([ "$HUGE" = 1 ] && echo yes || echo no); QEMU: $([ "$HAVE_QEMU" = 1 ] && echo yes || echo no)"
echo "TESTBED: SPEED setup cpus=$(grep -c ^processor /proc/cpuinfo) mem-kib=$(awk '/MemTotal/ { print $2 }' /proc/meminfo) thp=$(sed 's/.*\[\(.*\)\].*/\1/' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo none)"
if [ "$HAVE_QEMU" = 0 ]; then
    step speed-qemu FAIL "no QEMU in $QEMU_DIR (run.sh copies it when the speed pass is on)"
    exit 1
fi
# QEMU's libraries (run.sh copies them next to it); refvmm and the meter are static and ignore this.
export LD_LIBRARY_PATH=$QEMU_DIR/lib
# Load both binaries once, so the first measured run does not pay for reading them.
refvmm --version >/dev/null 2>&1
"$QEMU_DIR/bin/qemu-system-x86_64" --version >/dev/null 2>&1
# Fault in and free as much memory as the largest size, once: L2's first large allocation after boot is slower,
# and would fall on whichever VMM starts first (refvmm's DMA map of 256 MiB took 1.5-1.6 s when it started first,
# 1.09 s when QEMU had started before it; QEMU's own took 1.08-1.19 s).
WARM_MIB=0
for SIZE in $SPEED_SIZES; do
    MIB=$(mib_of "$SIZE")
    [ "$MIB" -gt "$WARM_MIB" ] && WARM_MIB=$MIB
done
dd if=/dev/zero of=/dev/null bs="${WARM_MIB}M" count=1 2>/dev/null ||
    note "speed pass: could not fault in ${WARM_MIB} MiB before the runs; the first VMM to start pays for it"

# ---- start-up per size and backing ----------------------------------------------------------------------------
for SIZE in $SPEED_SIZES; do
    MIB=$(mib_of "$SIZE")
    run_pair "$SIZE" default "$NVME_BDF" nvme
    for N in $SPEED_PREFAULT; do
        measure "refvmm-thp-$MIB-prefault$N" --timeout "$RUN_TIMEOUT" -- refvmm run --memory "$SIZE" \
            --memory-backing thp --prefault-threads "$N" --device "$NVME_BDF" --iommu type1
        set -- $(refvmm_split "/tmp/speed-refvmm-thp-$MIB-prefault$N.out")
        echo "TESTBED: SPEED vmm=refvmm backing=thp-prefault$N mib=$MIB device=nvme status=$STATUS vm-created=${VMC:-?} first-exit=${FIRST:-?} ram=${1:-?} devices=${2:-?} dma-map=${3:-?} self-first=${4:-?}"
        if [ -n "$FIRST" ] && [ "$STATUS" = 0 ]; then
            step "speed-refvmm-thp-$MIB-prefault$N" OK "--prefault-threads $N: first guest exit ${FIRST}s after start; RAM ${1:-?}s, devices ${2:-?}s (DMA map ${3:-?}s)"
        else
            step "speed-refvmm-thp-$MIB-prefault$N" FAIL "refvmm exit $STATUS, first exit '${FIRST:-none}' (output above)"
        fi
    done
    if [ "$HUGE" = 0 ]; then
        step "speed-hugetlb-$MIB" SKIP "no hugetlbfs in L2 (/proc/sys/vm/nr_hugepages): the own L2 kernel has none"
        continue
    fi
    # refvmm reserves all of guest RAM at start; QEMU's prealloc=on faults it all in: SIZE / 2 MiB pages each.
    if hugepages $((MIB / 2)); then
        run_pair "$SIZE" hugetlb "$NVME_BDF" nvme
    else
        step "speed-hugetlb-$MIB" SKIP "L2 could reserve $(cat /proc/sys/vm/nr_hugepages) of $((MIB / 2)) 2 MiB pages (TESTBED_MEM)"
    fi
    hugepages 0
done

# ---- the large BAR --------------------------------------------------------------------------------------------
if [ -z "$BAR_BDF" ]; then
    step speed-bar SKIP "no $SPEED_BAR_ID (ivshmem-plain) on L2's bus"
    exit "$FAILS"
fi
if ! bind_vfio "$BAR_BDF"; then
    step speed-bar FAIL "$BAR_BDF ($SPEED_BAR_ID) is on '$(driver_of "$BAR_BDF")', not vfio-pci"
    exit "$FAILS"
fi
# sysfs `resource`, line 3 (BAR2): "start end flags", in hex.
set -- $(sed -n 3p "/sys/bus/pci/devices/$BAR_BDF/resource")
BAR_MIB=$((($2 - $1 + 1) >> 20))
note "large BAR: $BAR_BDF BAR2 $(sed -n 3p "/sys/bus/pci/devices/$BAR_BDF/resource") in L2 (${BAR_MIB} MiB), bound to vfio-pci"
SMALL=$(echo "$SPEED_SIZES" | awk '{ print $1 }')
run_pair "$SMALL" default "$BAR_BDF" ivshmem

# ---- stores into the BAR: L2 through the VFIO mmap, then the guest through refvmm's memory slot ---------------
STORE_BYTES=$((SPEED_STORE_MIB * 1048576))
echo "  \$ barstores $BAR_BDF 2 $STORE_BYTES"
/speed/barstores "$BAR_BDF" 2 "$STORE_BYTES" >/tmp/speed-barstores.out 2>&1
RC=$?
sed 's/^/  | /' /tmp/speed-barstores.out
HOST=$(sed -n 's/^BARSTORES //p' /tmp/speed-barstores.out)
if [ "$RC" = 0 ] && [ -n "$HOST" ]; then
    echo "TESTBED: SPEED stores side=l2 $HOST"
    step speed-stores-l2 OK "L2 stored into the VFIO mmap of $BAR_BDF BAR2: $HOST"
else
    step speed-stores-l2 FAIL "barstores exit $RC (output above)"
fi
if [ ! -f "$HERE/bar_stores.elf" ]; then
    step speed-stores-guest SKIP "no $HERE/bar_stores.elf (tests/guests bar_stores)"
    exit "$FAILS"
fi
measure stores-guest --timeout "$RUN_TIMEOUT" -- refvmm run --guest "$HERE/bar_stores.elf" --memory "$SMALL" \
    --device "$BAR_BDF" --iommu type1 --cmdline "device=$SPEED_BAR_ID bar=2 bytes=$STORE_BYTES" --show-counters --show-mtree
OUT=/tmp/speed-stores-guest.out
GUEST=$(sed -n 's/.*NOTE bar-stores //p' "$OUT" | head -n 1)
# KVM's counters at the guest's marks: the warm pass's exits (all kinds) and MMIO exits to refvmm.
mark() { sed -n "s/^METER mark=$1 .* $2=\([0-9-]*\).*/\1/p" "$OUT" | head -n 1; }
d() { _a=$(mark "$1" "$3") _b=$(mark "$2" "$3"); if [ -n "$_a" ] && [ -n "$_b" ]; then echo $((_b - _a)); else echo "?"; fi; }
echo "TESTBED: SPEED stores side=guest status=$STATUS $GUEST cold-exits=$(d cold warm exits) cold-pf-fixed=$(d cold warm pf_fixed) warm-exits=$(d warm hot exits) warm-mmio-exits=$(d warm hot mmio_exits) warm-pf-fixed=$(d warm hot pf_fixed) hot-exits=$(d hot end exits) all-mmio-exits=$(d cold end mmio_exits)"
if [ "$STATUS" = 0 ] && [ -n "$GUEST" ] && [ "$(d cold end mmio_exits)" = 0 ]; then
    step speed-stores-guest OK "the guest stored into BAR2 (a memory slot over the VFIO mmap) with 0 MMIO exits (KVM's mmio_exits from its first to its last mark): $GUEST"
else
    step speed-stores-guest FAIL "refvmm exit $STATUS; guest: '${GUEST:-no bar-stores note}'; MMIO exits during the stores: $(d cold end mmio_exits) (0 expected: the BAR is mapped)"
fi
exit "$FAILS"
