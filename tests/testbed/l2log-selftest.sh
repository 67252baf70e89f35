#!/usr/bin/env bash
# Checks l2log.sh, the bed's reading of L2's serial log, without booting anything: the one real switch panic
# (fixtures/l2-switch-panic.log) must count as the emulator's, and logs that differ from it only where it
# matters must not. Run by .ci/run before the bed; takes well under a second.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=l2log.sh
source "$HERE/l2log.sh"
FIXTURE=$HERE/fixtures/l2-switch-panic.log
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fails=0

# expect yes|no NAME LOG: whether switch_panic takes LOG for the emulator's panic.
expect() {
    local want=$1 name=$2 log=$3 got=no
    switch_panic "$log" && got=yes
    if [ "$got" = "$want" ]; then
        echo "ok   $name"
    else
        echo "FAIL $name: switch_panic says $got, expected $want"
        fails=$((fails + 1))
    fi
}

grep -aqE "$PANIC_RE" "$FIXTURE" || { echo "FAIL the fixture has no panic line PANIC_RE matches"; exit 1; }
expect yes "the CI panic: a reschedule IPI taken on the instruction after VMRUN" "$FIXTURE"
# The same oops with the interrupt taken in ordinary kernel code: an L2 bug, a verdict.
sed 's/RIP: 0010:__svm_vcpu_run+0x9c\/0x210 \[kvm_amd\]/RIP: 0010:native_safe_halt+0xb\/0x10/' "$FIXTURE" >"$WORK/elsewhere.log"
expect no "the same oops, the interrupt taken outside the world switch" "$WORK/elsewhere.log"
# The same RIP reached by a fault, not an interrupt: KVM's own bug, a verdict.
sed 's/asm_sysvec_reschedule_ipi+0x16\/0x20/asm_exc_general_protection+0x26\/0x30/' "$FIXTURE" >"$WORK/fault.log"
expect no "the same RIP reached by a #GP instead of an interrupt" "$WORK/fault.log"
# Relayed by L2 (indented, as an L3 guest's console is): not L2's own oops.
sed 's/^\[/  refvmm| [/' "$FIXTURE" >"$WORK/relayed.log"
expect no "the oops indented, as L2 relays an L3 guest's console" "$WORK/relayed.log"
# The frames after L2's panic line (a second oops while dying) do not count.
{ grep -aE -m 1 "$PANIC_RE" "$FIXTURE"; cat "$FIXTURE"; } >"$WORK/after.log"
expect no "the frames only after the panic line" "$WORK/after.log"
# Unix line ends, as a log copied through an editor: the same verdict.
tr -d '\r' <"$FIXTURE" >"$WORK/lf.log"
expect yes "the CI panic with LF line ends" "$WORK/lf.log"

[ "$fails" -eq 0 ] || { echo "l2log-selftest: $fails check(s) failed"; exit 1; }
echo "l2log-selftest: all checks passed"
