#!/bin/sh
# shellcheck disable=SC2012 # sysfs and /dev names have no spaces (as in init.sh.in)
# Issue 13, in L2 (busybox sh): the L3 passthrough run by an UNPRIVILEGED refvmm, with the NVMe's VFIO cdev and
# /dev/iommu opened by root and handed in (`refvmm launch`), and the proof that the same user could not have opened
# the device itself. Needs the bed's own kernel (tests/testbed/kernel: CONFIG_IOMMUFD, CONFIG_VFIO_DEVICE_CDEV) and
# the NVMe bound to vfio-pci, with no other process holding it.
#
# Environment (as for payload/run-l3.sh, from /init): NVME_BDF, NVME_SERIAL, PATTERN_LBA; optional L3_ELF,
# L3_TIMEOUT, HANDED_IN_UID (default 65534), KVM_GID (default 78: /dev/kvm's group, as Debian's udev rule makes it
# root:kvm 0660).
#
# Steps (one `TESTBED: STEP name OK|FAIL (t=..s) detail` line each); exit status: the number of failed steps.
#   handed-in-nodes    /dev/iommu and the NVMe's /dev/vfio/devices/vfioN exist and only root may open them
#   handed-in-check    `refvmm check` as the user names what it lacks (both nodes) and what a launcher grants
#   handed-in-denied   as the user, `refvmm run --device BDF` fails to open the device, over iommufd and over type1
#   handed-in-run      `refvmm launch --device BDF` as root -> refvmm run as the user: the guest passes, through the
#                      handed-in fds (refvmm says "handed in" and names /proc/self/fd/N), as the user's uid
set -u
: "${NVME_BDF:?set by /init}" "${NVME_SERIAL:?set by /init}" "${PATTERN_LBA:?set by /init}"
ELF=${L3_ELF:-/payload/nvme_e2e.elf}
L3_TIMEOUT=${L3_TIMEOUT:-40}
USER_ID=${HANDED_IN_UID:-65534}
KVM_GID=${KVM_GID:-78}
GUEST_CMDLINE="bars=keep serial=$NVME_SERIAL lba=$PATTERN_LBA"

. /etc/testbed/steps.sh # step, note, uptime_s, driver_of; FAILS
# show LOG COMMAND...: runs COMMAND with its output in LOG and indented on the console; sets RC.
show() {
    _log=$1
    shift
    echo "  \$ $*"
    { "$@" 2>&1; echo $? >/tmp/handed-in-rc; } | tee "$_log" | sed 's/^/  | /'
    RC=$(cat /tmp/handed-in-rc)
    echo "  (exit $RC)"
}

# ---- handed-in-nodes ------------------------------------------------------------------------------------------
CDEV_NAME=$(ls "/sys/bus/pci/devices/$NVME_BDF/vfio-dev" 2>/dev/null | head -n 1)
CDEV=/dev/vfio/devices/$CDEV_NAME
# /dev/kvm as a distribution's udev leaves it (root:kvm 0660): the user gets KVM through the group, nothing else.
chgrp "$KVM_GID" /dev/kvm && chmod 0660 /dev/kvm
ls -l /dev/iommu "$CDEV" /dev/kvm /dev/vfio 2>&1 | sed 's/^/  | /'
others_rw() { # FILE: exit 0 when "other" users may read or write it
    _mode=$(ls -l "$1" | cut -c8-9)
    [ "$_mode" != "--" ]
}
if [ -z "$CDEV_NAME" ] || [ ! -c "$CDEV" ] || [ ! -c /dev/iommu ]; then
    step handed-in-nodes FAIL "no VFIO cdev for $NVME_BDF ('${CDEV_NAME}') or no /dev/iommu: is this the bed's own kernel (CONFIG_IOMMUFD, CONFIG_VFIO_DEVICE_CDEV)?"
    exit "$FAILS"
elif others_rw "$CDEV" || others_rw /dev/iommu; then
    step handed-in-nodes FAIL "$CDEV or /dev/iommu is open to other users: the check below would prove nothing"
else
    step handed-in-nodes OK "$CDEV and /dev/iommu exist and only root (and its group) may open them"
fi

# ---- handed-in-check --------------------------------------------------------------------------------------------
show /tmp/handed-in-check.log refvmm launch --user "$USER_ID:$USER_ID" -- refvmm check "$NVME_BDF" --memory 64M
if grep -q "this process lacks: read-write access to $CDEV; read-write access to /dev/iommu" /tmp/handed-in-check.log &&
    grep -q "without privileges, a VMM needs from a launcher" /tmp/handed-in-check.log; then
    step handed-in-check OK "as uid $USER_ID, refvmm check names the launcher's grants and lacks both nodes"
else
    step handed-in-check FAIL "refvmm check as uid $USER_ID did not name the missing nodes (see its output above)"
fi

# ---- handed-in-denied: the user alone cannot open the device ----------------------------------------------------
_denied=""
for _backend in iommufd type1; do
    show "/tmp/handed-in-denied-$_backend.log" refvmm launch --user "$USER_ID:$USER_ID" --groups "$KVM_GID" --memlock 256M -- \
        refvmm run --guest "$ELF" --device "$NVME_BDF" --iommu "$_backend" --cmdline "$GUEST_CMDLINE" --timeout "$L3_TIMEOUT"
    if [ "$RC" -ne 0 ] && grep -qiE "permission denied|no permission" "/tmp/handed-in-denied-$_backend.log" &&
        ! grep -q '^GUEST: ' "/tmp/handed-in-denied-$_backend.log"; then
        _denied="$_denied $_backend"
    else
        step handed-in-denied FAIL "as uid $USER_ID, refvmm run --iommu $_backend exited $RC without a permission error: the user could reach the device (or failed for another reason)"
    fi
done
[ "$_denied" = " iommufd type1" ] &&
    step handed-in-denied OK "as uid $USER_ID (KVM through group $KVM_GID), refvmm could not open $NVME_BDF itself: permission denied over iommufd and type1"

# ---- handed-in-run: root opens, the user runs ------------------------------------------------------------------
show /tmp/handed-in-run.log refvmm launch --user "$USER_ID:$USER_ID" --groups "$KVM_GID" --memlock 256M --device "$NVME_BDF" -- \
    refvmm run --guest "$ELF" --cmdline "$GUEST_CMDLINE" --show-counters --timeout "$L3_TIMEOUT"
_result=$(grep '^GUEST: RESULT ' /tmp/handed-in-run.log | head -n 1)
_opened=$(grep "opened through iommufd /proc/self/fd/" /tmp/handed-in-run.log | head -n 1)
_as=$(grep "^refvmm launch: as $USER_ID:$USER_ID" /tmp/handed-in-run.log | head -n 1)
if [ "$RC" -eq 0 ] && echo "$_result" | grep -q '^GUEST: RESULT PASS ' && [ -n "$_opened" ] && [ -n "$_as" ] &&
    echo "$_opened" | grep -q "(handed in)"; then
    step handed-in-run OK "uid $USER_ID, fds from root: ${_opened#refvmm: }; ${_result#GUEST: }"
else
    step handed-in-run FAIL "refvmm exit $RC; ${_result:-no GUEST: RESULT line}; opened: ${_opened:-not through handed-in iommufd fds}; launcher: ${_as:-did not drop to $USER_ID}"
fi
exit "$FAILS"
