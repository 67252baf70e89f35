#!/usr/bin/env bash
# Checks l2log.sh, the bed's reading of L2's serial log, without booting anything: the one real switch panic
# (fixtures/l2-switch-panic.log) must count as the emulator's, and logs that differ from it only where it
# matters must not; L2's own stall reports must count, relayed ones not. Run by .ci/run before the bed; takes
# well under a second.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=l2log.sh
source "$HERE/l2log.sh"
FIXTURE=$HERE/fixtures/l2-switch-panic.log
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fails=0

# check yes|no NAME COMMAND...: whether COMMAND succeeds.
check() {
    local want=$1 name=$2 got=no
    shift 2
    "$@" && got=yes
    if [ "$got" = "$want" ]; then
        echo "ok   $name"
    else
        echo "FAIL $name: $1 says $got, expected $want"
        fails=$((fails + 1))
    fi
}
is_stall() { grep -aqE "$STALL_RE" <<<"$1"; }

grep -aqE "$PANIC_RE" "$FIXTURE" || { echo "FAIL the fixture has no panic line PANIC_RE matches"; exit 1; }
check yes "the CI panic: a reschedule IPI taken on the instruction after VMRUN" switch_panic "$FIXTURE"
# The same oops with the interrupt taken in ordinary kernel code: an L2 bug, a verdict.
sed 's/RIP: 0010:__svm_vcpu_run+0x9c\/0x210 \[kvm_amd\]/RIP: 0010:native_safe_halt+0xb\/0x10/' "$FIXTURE" >"$WORK/elsewhere.log"
check no "the same oops, the interrupt taken outside the world switch" switch_panic "$WORK/elsewhere.log"
# The same RIP reached by a fault, not an interrupt: KVM's own bug, a verdict.
sed 's/asm_sysvec_reschedule_ipi+0x16\/0x20/asm_exc_general_protection+0x26\/0x30/' "$FIXTURE" >"$WORK/fault.log"
check no "the same RIP reached by a #GP instead of an interrupt" switch_panic "$WORK/fault.log"
# Relayed by L2 (indented, as an L3 guest's console is): not L2's own oops.
sed 's/^\[/  refvmm| [/' "$FIXTURE" >"$WORK/relayed.log"
check no "the oops indented, as L2 relays an L3 guest's console" switch_panic "$WORK/relayed.log"
# The frames after L2's panic line (a second oops while dying) do not count.
{ grep -aE -m 1 "$PANIC_RE" "$FIXTURE"; cat "$FIXTURE"; } >"$WORK/after.log"
check no "the frames only after the panic line" switch_panic "$WORK/after.log"
# Unix line ends, as a log copied through an editor: the same verdict.
tr -d '\r' <"$FIXTURE" >"$WORK/lf.log"
check yes "the CI panic with LF line ends" switch_panic "$WORK/lf.log"

check yes "L2's RCU stall" is_stall "[   88.123456] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"
check yes "L2's soft lockup" is_stall "[  120.000001] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [vcpu0:1021]"
check no "an L3 guest's RCU stall, relayed" is_stall "  refvmm| [   40.5] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"

[ "$fails" -eq 0 ] || { echo "l2log-selftest: $fails check(s) failed"; exit 1; }
echo "l2log-selftest: all checks passed"
