# shellcheck shell=bash
# How run.sh reads L2's serial log: which lines are L2's own hang or panic, and which panic is the emulator's
# rather than a verdict. Sourced by run.sh; l2log-selftest.sh checks it against fixtures/.
#
# Only L2's own console lines count: they start at column 0, while everything L2 relays (an L3 guest's console,
# command output) is indented, so an L3 kernel's stall or panic is that pass's failure, not a frozen L2.

# A frozen L2 vCPU shows as an RCU stall or a soft lockup; a soft lockup repeats every ~28 s, which keeps the
# silence detector quiet, so it must be caught from the log or it costs the whole TESTBED_TIMEOUT.
# shellcheck disable=SC2034 # read by run.sh
STALL_RE='^([^ ].*)?(rcu: INFO: rcu_(sched|preempt) (self-)?detected stall|detected stalls on CPUs|watchdog: BUG: soft lockup|Watchdog detected hard LOCKUP)'
PANIC_RE='^([^ ].*)?Kernel panic'

# switch_panic LOG: succeeds when L2's kernel died of an interrupt taken inside KVM's world switch: in L2's own
# oops before its panic line, an `asm_sysvec_*` or `asm_common_interrupt` frame whose interrupted RIP is in
# `__svm_vcpu_run`.
# On hardware no interrupt arrives there: #VMEXIT clears GIF, and svm_vcpu_run sets it again (STGI) only after
# the host's state is back. The one seen (CI check of 5 December 2026, fixtures/l2-switch-panic.log) interrupted
# the instruction after VMRUN, before the host's segment state was reloaded; the handler's per-CPU read through
# GS faulted, and so did the fault handler's, until the stack ran out. That is the emulator's SVM (TCG), not the
# VMM under test: a broken boot, like a hang. Any other L2 panic stays a verdict.
switch_panic() {
    awk -v panic="$PANIC_RE" '
        $0 ~ panic { exit }
        /^\[ *[0-9.]+\] RIP: [0-9a-f]+:__svm_vcpu_run\+/ &&
            prev ~ /^\[ *[0-9.]+\] +asm_(sysvec_[a-z_]+|common_interrupt)\+/ { found = 1; exit }
        { prev = $0 }
        END { exit !found }' <(tr -d '\r' <"$1")
}
