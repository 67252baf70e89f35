# Step reporting for the scripts /init runs in L2 (payload/run-l3.sh, handed-in/run-handed-in.sh,
# speed/speed.sh, l3linux/passes.sh): sourced from /etc/testbed/steps.sh, where run.sh puts it. The lines it
# prints are the ones run.sh's verdict reads (init.sh.in, "Protocol"); FAILS counts the FAIL steps, and each
# script exits with it.
FAILS=0

uptime_s() { cut -d' ' -f1 /proc/uptime; }
# step NAME OK|FAIL|SKIP DETAIL...: NAME gets STEP_SUFFIX appended when a script sets it (run-l3.sh: the IOMMU
# back end of the current pass, l3-default-type1).
STEP_SUFFIX=""
step() {
    _name=$1$STEP_SUFFIX _status=$2
    shift 2
    [ "$_status" = FAIL ] && FAILS=$((FAILS + 1))
    echo "TESTBED: STEP $_name $_status (t=$(uptime_s)s) $*"
}
note() { echo "TESTBED: NOTE $*"; }
# driver_of BDF: the driver bound to the function, or nothing.
driver_of() { [ -e "/sys/bus/pci/devices/$1/driver" ] && basename "$(readlink "/sys/bus/pci/devices/$1/driver")"; }
