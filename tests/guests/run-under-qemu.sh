#!/usr/bin/env bash
# Runs the guest images under QEMU directly (TCG, QEMU's own emulated devices; no VFIO, no refvmm) and
# checks what they report and what they wrote. Exits non-zero on any failure; prints timings.
#
#   tests/guests/run-under-qemu.sh
#
# Runs:
#   nvme-e2e        nvme_e2e against QEMU's NVMe with a disk image prepared like the test bed's; must PASS with
#                   every completion signalled by MSI-X, and afterwards the image must equal the prepared one
#                   plus exactly the block the guest wrote.
#   nvme-e2e-wrong  the same with a wrong expected serial: must FAIL at identify-controller (the guest tells
#                   the truth, and the status reaches the exit code).
#   nvme-e2e-keep-high  the nvme-e2e run with bars=keep and BAR0 where SeaBIOS put it: above 4 GiB, past the
#                   boot page tables, because a 2 GiB ivshmem BAR fills the 32-bit window. Must PASS.
#   pci-probe       pci_probe against an e1000e: BARs, MSI-X, a store read back, and an MSI-X interrupt the
#                   e1000e raises when the guest writes its Interrupt Cause Set register.
#
# QEMU: $QEMU if set (a qemu-system-x86_64; $QEMU_LD_LIBRARY_PATH and $QEMU_DATADIRS, colon-separated -L
# directories, may go with it), else the one the test bed unpacked into $TESTBED_CACHE (default
# build/testbed)/qemu-*/ (run
# tests/testbed/run.sh once to fetch it), else qemu-system-x86_64 from PATH.
# Other knobs: GUESTS_QEMU_TIMEOUT (seconds per run, default 60), GUESTS_WORK (default build/guests).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=${GUESTS_WORK:-$repo/build/guests}
timeout_s=${GUESTS_QEMU_TIMEOUT:-60}
serial=REFVMM-TESTBED-0001
pattern_lba=100
write_lba=$((pattern_lba + 1))

T0=$EPOCHREALTIME
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
fail() { printf 'run-under-qemu: FAIL: %s\n' "$*" >&2; exit 1; }

# ---- QEMU --------------------------------------------------------------------------------------------------
qemu_env=()
qemu_fw=()
if [ -n "${QEMU:-}" ]; then
    qemu=$QEMU
    [ -z "${QEMU_LD_LIBRARY_PATH:-}" ] || qemu_env=("LD_LIBRARY_PATH=$QEMU_LD_LIBRARY_PATH")
    IFS=: read -ra dirs <<<"${QEMU_DATADIRS:-}"
    for d in "${dirs[@]}"; do [ -z "$d" ] || qemu_fw+=(-L "$d"); done
else
    root=$(ls -dt "${TESTBED_CACHE:-$repo/build/testbed}"/qemu-*/ 2>/dev/null | head -n 1 || true)
    if [ -n "$root" ] && [ -x "$root/usr/bin/qemu-system-x86_64" ]; then
        root=${root%/}
        qemu=$root/usr/bin/qemu-system-x86_64
        qemu_env=("LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu")
        qemu_fw=(-L "$root/usr/share/qemu" -L "$root/usr/share/seabios" -L "$root/usr/lib/ipxe/qemu")
    elif command -v qemu-system-x86_64 >/dev/null; then
        qemu=$(command -v qemu-system-x86_64)
    else
        fail "no QEMU: run tests/testbed/run.sh once (it unpacks one into build/testbed/), install qemu-system-x86, or set QEMU=/path/to/qemu-system-x86_64"
    fi
fi
printf 'run-under-qemu: %s\n' "$(env "${qemu_env[@]}" "$qemu" --version | head -n 1) ($qemu)"

# ---- build -------------------------------------------------------------------------------------------------
t=$EPOCHREALTIME
mkdir -p "$work"
mapfile -t elfs < <(GUEST_NVME_SERIAL=$serial GUEST_PATTERN_LBA=$pattern_lba bash "$here/build.sh" "$work/elf")
# build.sh builds every guest; these runs need two of them, found by name.
pci_probe_elf="" nvme_e2e_elf=""
for _elf in "${elfs[@]}"; do
    case ${_elf##*/} in
    pci_probe.elf) pci_probe_elf=$_elf ;;
    nvme_e2e.elf) nvme_e2e_elf=$_elf ;;
    esac
done
[ -n "$pci_probe_elf" ] && [ -n "$nvme_e2e_elf" ] ||
    fail "build.sh printed no pci_probe.elf or no nvme_e2e.elf among: ${elfs[*]}"
printf 'run-under-qemu: built %s in %ss\n' "${elfs[*]}" "$(since "$t")"

# ---- one QEMU run ------------------------------------------------------------------------------------------
# run NAME WANT_STATUS ELF APPEND QEMU-ARGS...: boots, captures the serial log, checks the guest status
# (isa-debug-exit makes QEMU exit with status*2+1; 124 means the timeout hit).
run() {
    local name=$1 want=$2 elf=$3 append=$4
    shift 4
    local log=$work/$name.log t=$EPOCHREALTIME rc=0
    env "${qemu_env[@]}" timeout -k 5 "$timeout_s" "$qemu" "${qemu_fw[@]}" \
        -machine q35 -accel tcg -cpu max -m 256M -nodefaults -display none -no-reboot \
        -device isa-debug-exit -serial "file:$log" \
        -kernel "$elf" -append "$append" "$@" </dev/null >"$work/$name.qemu.log" 2>&1 || rc=$?
    local secs
    secs=$(since "$t")
    grep -E '^GUEST: (STEP|RESULT|PANIC|EXCEPTION)' "$log" 2>/dev/null | sed 's/^/    /' || true
    local got
    case $rc in
        1) got=pass ;; 3) got=fail ;; 5) got=crash ;; 124 | 137) got="hang (killed after ${timeout_s}s)" ;;
        *) got="QEMU exit $rc" ;;
    esac
    if [ "$got" != "$want" ]; then
        tail -n 20 "$work/$name.qemu.log" | sed 's/^/    qemu: /' >&2
        fail "$name: guest status '$got', want '$want' after ${secs}s; serial log $log"
    fi
    grep -q "^GUEST: RESULT ${want^^} " "$log" || fail "$name: no 'GUEST: RESULT ${want^^}' line in $log"
    printf 'run-under-qemu: %s: %s as expected in %ss (QEMU start to exit)\n' "$name" "$want" "$secs"
}

# ---- nvme_e2e ----------------------------------------------------------------------------------------------
# The disk: 64 MiB of zeros with the test bed's pattern block at LBA 100 (tests/testbed/run.sh).
make_disk() {
    rm -f "$1"
    truncate -s 64M "$1"
    for k in $(seq 0 31); do printf 'LBA=%04d REC=%02d\n' "$pattern_lba" "$k"; done >"$work/pattern.bin"
    dd if="$work/pattern.bin" of="$1" bs=512 seek="$pattern_lba" conv=notrunc status=none
}
nvme_args() { echo "-drive file=$1,if=none,id=n0,format=raw -device nvme,drive=n0,serial=$serial"; }

make_disk "$work/nvme.img"
make_disk "$work/expected.img"
for k in $(seq 0 31); do printf 'E2E=%04d REC=%02d\n' "$write_lba" "$k"; done >"$work/written.bin"
dd if="$work/written.bin" of="$work/expected.img" bs=512 seek="$write_lba" conv=notrunc status=none

# shellcheck disable=SC2046
run nvme-e2e pass "$nvme_e2e_elf" "lba=$pattern_lba write-lba=$write_lba" $(nvme_args "$work/nvme.img")
grep -q '^GUEST: STEP msix-interrupts PASS .* 0 found by polling' "$work/nvme-e2e.log" ||
    fail "nvme-e2e: completions were not all signalled by MSI-X (see $work/nvme-e2e.log)"
cmp -s "$work/nvme.img" "$work/expected.img" || {
    cmp "$work/nvme.img" "$work/expected.img" | head -n 3 >&2 || true
    fail "nvme-e2e: the image is not the prepared one plus the E2E block at LBA $write_lba"
}
printf 'run-under-qemu: nvme-e2e: the image holds the written block at LBA %d (byte %d) and nothing else changed\n' \
    "$write_lba" "$((write_lba * 512))"

make_disk "$work/nvme.img"
# shellcheck disable=SC2046
run nvme-e2e-wrong fail "$nvme_e2e_elf" "serial=NOT-THE-SERIAL" $(nvme_args "$work/nvme.img")
grep -q '^GUEST: STEP identify-controller FAIL .*"REFVMM-TESTBED-0001" (want "NOT-THE-SERIAL")' "$work/nvme-e2e-wrong.log" ||
    fail "nvme-e2e-wrong: identify-controller did not report the serial mismatch"

# bars=keep with BAR0 above 4 GiB: the 2 GiB ivshmem BAR does not fit SeaBIOS's 32-bit window, so SeaBIOS moves
# every 64-bit BAR above 4 GiB, the NVMe's BAR0 too. The guest must map it (src/paging.rs) rather than fault.
make_disk "$work/nvme.img"
# shellcheck disable=SC2046
run nvme-e2e-keep-high pass "$nvme_e2e_elf" "bars=keep lba=$pattern_lba write-lba=$write_lba" $(nvme_args "$work/nvme.img") \
    -object memory-backend-ram,id=big,size=2G -device ivshmem-plain,memdev=big
grep -q '^GUEST: NOTE bars=keep: .* BAR0 mem64 .* is above 4 GiB: mapped it uncached' "$work/nvme-e2e-keep-high.log" ||
    fail "nvme-e2e-keep-high: no note that BAR0 was above 4 GiB and got mapped (did SeaBIOS place it low?); see $work/nvme-e2e-keep-high.log"
cmp -s "$work/nvme.img" "$work/expected.img" ||
    fail "nvme-e2e-keep-high: the image is not the prepared one plus the E2E block at LBA $write_lba"

# ---- pci_probe ---------------------------------------------------------------------------------------------
# e1000e (82574L): IVAR (0xE4) = 0x8 routes the RXQ0 cause to MSI-X entry 0, IMS (0xD0) enables that cause,
# and the "trapped" write sets it in ICS (0xC8), so the device raises MSI-X entry 0.
run pci-probe pass "$pci_probe_elf" "poke=0:0xe4=0x8,0:0xd0=0x100000 trap=0:0xc8 trap-value=0x100000" \
    -device e1000e,netdev=u0 -netdev user,id=u0
grep -q '^GUEST: STEP msix-interrupt PASS' "$work/pci-probe.log" || fail "pci-probe: no MSI-X interrupt"

printf 'run-under-qemu: PASS in %ss\n' "$(since "$T0")"
