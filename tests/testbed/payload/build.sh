#!/usr/bin/env bash
# Payload build (host side, run by tests/testbed/run.sh from the repository root before packing): the L3 guest
# nvme_e2e (tests/guests), built with the bed's serial and pattern LBA as its defaults, into $TESTBED_PAYLOAD_OUT
# (which becomes /payload in L2). The guest is a static bare-metal ELF: nothing else is needed in L2.
set -euo pipefail
: "${TESTBED_PAYLOAD_OUT:?run by tests/testbed/run.sh}"
GUEST_NVME_SERIAL=${TESTBED_SERIAL:-REFVMM-TESTBED-0001} GUEST_PATTERN_LBA=${TESTBED_PATTERN_LBA:-100} \
    bash tests/guests/build.sh "$TESTBED_PAYLOAD_OUT" >/dev/null
rm -f "$TESTBED_PAYLOAD_OUT/pci_probe.elf" "$TESTBED_PAYLOAD_OUT/bar_stores.elf" # not used in /payload (run.sh copies bar_stores to /speed)
[ -f "$TESTBED_PAYLOAD_OUT/nvme_e2e.elf" ] || { echo "payload/build.sh: no nvme_e2e.elf" >&2; exit 1; }
# Only run-l3.sh and the guest go into /payload; the host-side scripts stay out of the initramfs.
rm -f "$TESTBED_PAYLOAD_OUT/build.sh" "$TESTBED_PAYLOAD_OUT/post-check.sh"
echo "payload/build.sh: $TESTBED_PAYLOAD_OUT/nvme_e2e.elf ($(stat -c %s "$TESTBED_PAYLOAD_OUT/nvme_e2e.elf") bytes)"
