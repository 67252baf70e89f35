#!/usr/bin/env bash
# Payload post-check (host side, run by tests/testbed/run.sh after a passing boot): the block the L3 guest wrote
# through passthrough is in the disk image file, and the L3 runs' summaries (`TESTBED: L3 name key=value...`,
# printed by run-l3.sh in L2) make the comparison table. Environment from run.sh: TESTBED_DISK, TESTBED_LOG,
# TESTBED_SERIAL, TESTBED_PATTERN_LBA, TESTBED_OTHER_LBAS (blocks others in the bed write, checked by them: the
# L3 Linux passes'), TESTBED_IOMMU (the back ends run-l3.sh ran over: type1, iommufd). Exit non-zero on any failure.
set -euo pipefail
: "${TESTBED_DISK:?run by tests/testbed/run.sh}" "${TESTBED_LOG:?}"
lba=${TESTBED_PATTERN_LBA:-100}
write_lba=$((lba + 1)) # nvme_e2e's default write-lba
fails=0
ok() { printf 'post-check: %-16s OK   %s\n' "$1" "$2"; }
bad() { printf 'post-check: %-16s FAIL %s\n' "$1" "$2"; fails=$((fails + 1)); }

# ---- the image: the written block, the pattern block untouched, nothing else changed ----------------------
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for k in $(seq 0 31); do printf 'E2E=%04d REC=%02d\n' "$write_lba" "$k"; done >"$tmp/written.bin"
for k in $(seq 0 31); do printf 'LBA=%04d REC=%02d\n' "$lba" "$k"; done >"$tmp/pattern.bin"
dd if="$TESTBED_DISK" of="$tmp/got.bin" bs=512 skip="$write_lba" count=1 status=none
if cmp -s "$tmp/got.bin" "$tmp/written.bin"; then
    ok disk-written "LBA $write_lba (byte $((write_lba * 512))) of $(basename "$TESTBED_DISK") holds the guest's block ($(head -c 15 "$tmp/got.bin"))"
else
    bad disk-written "LBA $write_lba of $TESTBED_DISK is not the guest's block: $(od -A d -c "$tmp/got.bin" | head -n 2 | tr -s ' ' | tr '\n' ' ')"
fi
# The expected image: zeros, the pattern block, the written block. Anything else changed is a stray DMA write.
size=$(stat -c %s "$TESTBED_DISK")
truncate -s "$size" "$tmp/expected.img"
dd if="$tmp/pattern.bin" of="$tmp/expected.img" bs=512 seek="$lba" conv=notrunc status=none
dd if="$tmp/written.bin" of="$tmp/expected.img" bs=512 seek="$write_lba" conv=notrunc status=none
# The other writers' blocks: copied from the image into the expected one, so they are left out of this check.
for other in ${TESTBED_OTHER_LBAS:-}; do
    dd if="$TESTBED_DISK" of="$tmp/expected.img" bs=512 skip="$other" seek="$other" count=1 conv=notrunc status=none
done
if cmp -s "$TESTBED_DISK" "$tmp/expected.img"; then
    ok disk-other "nothing else in the $((size >> 20)) MiB image changed (pattern block at LBA $lba intact${TESTBED_OTHER_LBAS:+; LBAs $TESTBED_OTHER_LBAS left to the L3 Linux passes})"
else
    bad disk-other "the image differs from the prepared one plus the written block: $(cmp "$TESTBED_DISK" "$tmp/expected.img" 2>&1 | head -n 1)"
fi

# ---- the comparison table from the L3 summaries ------------------------------------------------------------
# field RUN KEY: KEY's value in the `TESTBED: L3 RUN ...` line.
field() {
    tr -d '\r' <"$TESTBED_LOG" | awk -v r="$1" -v k="$2=" '$1 == "TESTBED:" && $2 == "L3" && $3 == r {
        for (i = 4; i <= NF; i++) if (index($i, k) == 1) { print substr($i, length(k) + 1); exit } }'
}
backends=${TESTBED_IOMMU:-type1}
runs=""
for b in $backends; do
    for r in default trap-all dma-fault; do
        [ -n "$(field "$r-$b" rc)" ] || bad "l3-$r-$b" "no 'TESTBED: L3 $r-$b' summary in $TESTBED_LOG"
    done
    runs="$runs default-$b trap-all-$b"
done
# row LABEL KEY: KEY's value in each column; row2 LABEL KEY1 KEY2: "value1/value2".
row() {
    printf '  %-44s' "$1"
    for r in $runs; do printf ' %16s' "$(field "$r" "$2")"; done
    echo
}
row2() {
    printf '  %-44s' "$1"
    for r in $runs; do printf ' %16s' "$(field "$r" "$2")/$(field "$r" "$3")"; done
    echo
}
echo
echo "L3 nvme_e2e through refvmm + VFIO in L2, over each IOMMU back end ($backends); counters from refvmm --show-counters:"
row "" iommu
printf '  %-44s' ""
for r in $runs; do printf ' %16s' "${r%-*}"; done
echo
row "doorbell page (BAR0+0x1000)" doorbell-page
row "doorbell writes (guest's count)" doorbell-writes
row "  of which I/O queue 3" io-doorbell-writes
row "doorbell write exits" doorbell-exits
row "register writes (CC, AQA, ASQ, ACQ)" register-writes
row "write exits on BAR0 +0x0-0x1fff" bar0-write-exits
row "MMIO write exits (all)" mmio-write-exits
row "MMIO read exits (all)" mmio-read-exits
row2 "MSI-X table exits (reads/writes)" msix-table-reads msix-table-writes
row2 "pci-conf1 0xcf8-0xcff exits (reads/writes)" conf1-reads conf1-writes
row2 "completions by MSI-X / found by polling" via-msix via-poll
row "MSI-X vectors on a KVM irqfd" irqfd-vectors
row "messages injected by refvmm" pending-delivered
row "time per I/O (guest rdtsc, 4K read)" us-per-io
row "refvmm run, wall (L2 clock)" wall
echo "  (time per I/O: the guest's own TSC measurement of 8 reads of 1 block, doorbell to completion by MSI-X,"
echo "   in microseconds of L3 time. L2 runs under TCG, so the absolute numbers are emulation speed, not hardware;"
echo "   the difference between the columns is the cost of the doorbell exits. wall: refvmm start to exit, VM set-up included.)"
echo
# The DMA-fault run's two verdicts (run-l3.sh counted them already), repeated here next to the table.
for b in $backends; do
    for s in dma-fault-nvme-status dma-fault-iommu-log trace-sq3tdbl sigkill-mid-io sigterm-clean; do
        line=$(tr -d '\r' <"$TESTBED_LOG" | grep -m 1 "^TESTBED: STEP $s-$b " | sed 's/^TESTBED: STEP //' || true)
        printf 'post-check: %s\n' "${line:-no TESTBED: STEP $s-$b line in $TESTBED_LOG}"
    done
done
[ "$fails" -eq 0 ] || { echo "post-check: $fails check(s) failed"; exit 1; }
echo "post-check: PASS"
