#!/bin/sh
# shellcheck disable=SC2016 # the awk programs are in single quotes on purpose
# The L3 Linux passes of issue 10, run by L2's /init (busybox sh) after the payload, with the NVMe bound to
# vfio-pci. The same kernel (L2's own vmlinuz) and initramfs (/l3/initramfs.cpio.gz, /init from
# l3linux/init.sh.in) booted by each VMM in L3_PASSES, one after the other, with the same RAM and vCPUs and the
# NVMe passed through:
#
#   qemu     QEMU 7.2 (-accel kvm -device vfio-pci,host=BDF), the reference
#   refvmm   refvmm run --kernel ... --device BDF
#
# One meter for both: L2 timestamps every console line as it arrives (/proc/uptime, read by a shell builtin),
# and reads KVM's own per-VM statistics (debugfs kvm/<pid>-<fd>/, which exists only while the VM lives) and the
# VMM's /proc/<pid>/status at the guest's marks (l3linux/init.sh.in). Neither VMM counts itself.
#
# Prints one `TESTBED: STEP <vmm>-<name> OK|FAIL (t=..s) detail` per check (the guest's own steps included) and
# one `TESTBED: L3LINUX <vmm> key=value...` line per pass, which l3linux/compare.sh on the host turns into the
# side-by-side table. Exit status: the number of failed steps.
#
# Environment from /init: NVME_BDF, NVME_SERIAL, PATTERN_LBA, L3_PASSES, L3_MEM_MIB, L3_CPUS, L3_IOS,
# L3_TIMEOUT, L3_APPEND, L3_REFVMM_ARGS (extra arguments for refvmm's pass).
set -u
: "${NVME_BDF:?set by /init}" "${PATTERN_LBA:?}" "${L3_PASSES:?}" "${L3_MEM_MIB:?}" "${L3_CPUS:?}" "${L3_IOS:?}"
: "${L3_TIMEOUT:?}" "${L3_APPEND=}" "${L3_REFVMM_ARGS=}"

L3=/l3
KERNEL=$L3/vmlinuz
INITRD=$L3/initramfs.cpio.gz
KVMDBG=/sys/kernel/debug/kvm
CR=$(printf '\r') # the guest's console ends its lines with CR LF

. /etc/testbed/steps.sh # step, note, uptime_s, driver_of; FAILS
# wlba VMM: the block each pass writes (the payload's nvme_e2e writes PATTERN_LBA + 1).
wlba() { case $1 in qemu) echo $((PATTERN_LBA + 10)) ;; *) echo $((PATTERN_LBA + 11)) ;; esac; }

# ---- the meter ----------------------------------------------------------------------------------------------
# vm_dir: the one VM alive in L2 (the passes run one at a time and nothing else runs a VM), as kvm/<pid>-<fd>.
vm_dir() {
    for _d in "$KVMDBG"/[0-9]*-[0-9]*; do [ -d "$_d" ] && { echo "$_d"; return 0; }; done
    return 1
}
# snapshot VMM MARK: KVM's per-VM counters (each vCPU statistic summed over the VM's vCPUs) and the VMM's memory.
snapshot() {
    _out=/tmp/l3linux-$1.$2
    _dir=$(vm_dir) || { echo "no-vm 1" >"$_out"; return 0; }
    _pid=${_dir##*/}
    _pid=${_pid%-*}
    # `grep .` prints every readable file as name:value in one process; the vcpuN directories do not match.
    grep . "$_dir"/* 2>/dev/null | sed 's|.*/||; s/:/ /' >"$_out"
    awk '/^(VmRSS|VmHWM):/ { print $1, $2 }' "/proc/$_pid/status" | sed 's/://' >>"$_out"
    # How much of it transparent huge pages back (guest RAM is nearly all of an anonymous VMM's memory): under
    # TCG, L3 runs markedly slower on 4 KiB pages, whichever VMM faulted them in.
    awk '/^AnonHugePages:/ { print "AnonHugePages", $2 }' "/proc/$_pid/smaps_rollup" >>"$_out" 2>/dev/null
    read -r _up _ </proc/uptime
    echo "pid $_pid" >>"$_out"
    echo "at $_up" >>"$_out"
    # refvmm prints its counters (exits by kind, trapped ranges, device counters) on SIGUSR1 while the guest runs.
    [ "$1" = refvmm ] && [ "$2" = end ] && kill -USR1 "$_pid" 2>/dev/null
    return 0
}
# stat VMM MARK NAME: one value from a snapshot (empty when missing).
stat_of() { awk -v k="$3" '$1 == k { print $2; exit }' "/tmp/l3linux-$1.$2" 2>/dev/null; }
# delta VMM FROM TO NAME
delta() {
    _a=$(stat_of "$1" "$2" "$4") _b=$(stat_of "$1" "$3" "$4")
    if [ -n "$_a" ] && [ -n "$_b" ]; then echo $((_b - _a)); else echo "?"; fi
}
# net VMM NAME: the workload's share of a counter: ready..end (a second of idle, then the workload) minus
# idle..ready (the second of idle just before).
net() {
    _w=$(delta "$1" ready end "$2") _i=$(delta "$1" idle ready "$2")
    if [ "$_w" != "?" ] && [ "$_i" != "?" ]; then echo $((_w - _i)); else echo "?"; fi
}

# run_vmm VMM CMD...: starts the VMM under `timeout`, and reads its console line by line. Each line goes to the
# console (indented, `  VMM| `) and, timestamped with L2's uptime, to /tmp/l3linux-VMM.log; the guest's marks
# trigger the snapshots. The guest's lines come through its kernel log, behind a timestamp: the reader starts
# each such line at its "L3: ". Sets RC (the VMM's exit status; 137 when timeout killed it) and T_START.
run_vmm() {
    _vmm=$1
    shift
    _log=/tmp/l3linux-$_vmm.log
    rm -f /tmp/l3linux-"$_vmm".*
    : >"$_log"
    echo "  \$ $*"
    # A heartbeat: a VMM that boots a guest silently for a while must not look like a frozen L2 to run.sh.
    (
        _s=0
        while sleep 10; do
            _s=$((_s + 10))
            echo "  ($_vmm pass: ${_s}s, $(wc -l <"$_log") console lines so far)"
        done
    ) &
    _hb=$!
    read -r T_START _ </proc/uptime
    {
        timeout -s KILL "$L3_TIMEOUT" "$@" </dev/null 2>&1
        echo $? >/tmp/l3linux-rc
    } | while IFS= read -r _line; do
        read -r _now _ </proc/uptime
        _line=${_line%"$CR"}
        echo "  $_vmm| $_line"
        # The guest's lines come behind the kernel's timestamp, and firmware output (SeaBIOS clears the screen with
        # escape sequences and no newline) can share a line with the first: start such a line at its marker.
        case $_line in ?*"L3: "*) _line="L3: ${_line#*L3: }" ;; esac
        echo "$_now $_line" >>"$_log"
        case $_line in
        "L3: INIT"*) echo "$_now" >"/tmp/l3linux-$_vmm.t-init" ;;
        "L3: MARK idle"*) snapshot "$_vmm" idle ;;
        "L3: MARK ready"*) snapshot "$_vmm" ready ;;
        "L3: MARK begin"*) echo "$_now" >"/tmp/l3linux-$_vmm.t-begin" ;;
        "L3: MARK end"*)
            echo "$_now" >"/tmp/l3linux-$_vmm.t-end"
            snapshot "$_vmm" end
            ;;
        esac
    done
    kill "$_hb" 2>/dev/null
    wait "$_hb" 2>/dev/null
    RC=$(cat /tmp/l3linux-rc 2>/dev/null || echo "?")
    read -r _t _ </proc/uptime
    echo "  (exit $RC after $(awk -v a="$T_START" -v b="$_t" 'BEGIN { printf "%.2f", b - a }')s)"
}

# ---- the checks of one pass ---------------------------------------------------------------------------------
# result_of VMM KEY: the value of KEY=... in the guest's RESULT line.
result_of() { sed -n 's/^[0-9.]* L3: RESULT //p' "/tmp/l3linux-$1.log" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }
elapsed() { # elapsed FROM-FILE TO-FILE: seconds between two L2 timestamps, or ?
    if [ -s "$1" ] && [ -s "$2" ]; then awk -v a="$(cat "$1")" -v b="$(cat "$2")" 'BEGIN { printf "%.2f", b - a }'; else echo "?"; fi
}

# check_pass VMM: the guest's steps become ours; then the VMM-side checks and the summary line.
check_pass() {
    _v=$1 _log=/tmp/l3linux-$1.log
    # The guest's own verdicts, one by one.
    sed -n 's/^[0-9.]* L3: STEP //p' "$_log" | while read -r _n _s _rest; do
        echo "TESTBED: STEP $_v-$_n $_s (t=$(uptime_s)s) $_rest"
    done
    FAILS=$((FAILS + $(grep -c '^[0-9.]* L3: STEP [^ ]* FAIL' "$_log")))
    _init=$(awk -v a="$T_START" '{ print $1 - a; exit }' "/tmp/l3linux-$_v.t-init" 2>/dev/null)
    _done=$(sed -n 's/^[0-9.]* L3: DONE //p' "$_log" | head -n 1)
    if [ -z "$_init" ]; then
        step "$_v-boot" FAIL "no 'L3: INIT' from the guest (VMM exit $RC); its console is above (TESTBED_L3_APPEND=loglevel=8 for the whole kernel log)"
    else
        step "$_v-boot" OK "the guest's /init ran $(printf '%.2f' "$_init")s after the VMM started"
    fi
    # The tty: the guest's two writes to /dev/console. Linux's 8250 driver sends them on the UART's transmit
    # interrupt (printk, which carries every other line, polls), so this is the path a shell on the console needs.
    _tty=$(grep -o 'L3: TTY [a-z]*' "$_log" | sort -u | wc -l)
    if [ "$_tty" -eq 2 ]; then
        step "$_v-console" OK "the guest's two writes to /dev/console (the tty, sent on the 16550's transmit interrupt) arrived"
    elif [ -n "$_init" ]; then
        step "$_v-console" FAIL "$_tty of the guest's 2 writes to /dev/console arrived, while its kernel-log lines did: Linux's 8250 driver sends tty output on the UART's transmit interrupt (printk polls the UART), so that interrupt does not reach the guest or the UART never raises it"
    else
        step "$_v-console" FAIL "$_tty of the guest's 2 writes to /dev/console arrived (and no kernel-log line from /init)"
    fi
    if [ -n "$_done" ] && [ "$RC" = 0 ]; then
        step "$_v-poweroff" OK "the guest powered off (${_done%% *}) and the VMM exited 0"
    else
        step "$_v-poweroff" FAIL "VMM exit $RC$([ "$RC" = 137 ] && echo " (killed after L3_TIMEOUT=${L3_TIMEOUT}s)"); guest: ${_done:-no 'L3: DONE' line}"
    fi

    # KVM's counters: window = ready..end (one second of idle, then the workload); idle = idle..ready (one second
    # of idle, measured just before). The workload's own exits: window - idle.
    _ios=$(result_of "$_v" ios)
    _ios=${_ios:-$L3_IOS}
    _win=$(delta "$_v" ready end exits)
    _idle=$(delta "$_v" idle ready exits)
    _net="?" _mmio=$(delta "$_v" ready end mmio_exits)
    [ "$_win" != "?" ] && [ "$_idle" != "?" ] && _net=$((_win - _idle))
    # No MMIO exit on the doorbells: each I/O writes a submission doorbell and a completion doorbell, so a trapped
    # doorbell page would show at least 2 MMIO exits per I/O. Allow a few exits for anything else.
    if [ "$_mmio" = "?" ]; then
        step "$_v-doorbells-mapped" FAIL "no KVM statistics for the workload (the marks were not seen, or no VM directory under $KVMDBG)"
    elif [ $((_mmio * 16)) -lt "$_ios" ]; then
        step "$_v-doorbells-mapped" OK "$_mmio MMIO exits to the VMM during $_ios reads (KVM's mmio_exits): the doorbells do not exit"
    else
        step "$_v-doorbells-mapped" FAIL "$_mmio MMIO exits to the VMM during $_ios reads (KVM's mmio_exits; at least 2 per I/O means trapped doorbells)"
    fi
    _irqs=$(result_of "$_v" io-irqs)
    case $_v in
    qemu)
        # QEMU's trace: vfio_msix_vector_do_use once per vector it wired, vfio_msi_interrupt once per interrupt
        # that QEMU relayed itself (none when the vector's eventfd is a KVM irqfd).
        _used=$(grep -c 'vfio_msix_vector_do_use' /tmp/l3linux-qemu.trace 2>/dev/null)
        _relayed=$(grep -c 'vfio_msi_interrupt' /tmp/l3linux-qemu.trace 2>/dev/null)
        _irqfd_detail="QEMU trace: ${_used:-0} MSI-X vectors set up (vfio_msix_vector_do_use), ${_relayed:-0} interrupts relayed by QEMU (vfio_msi_interrupt); the guest took ${_irqs:-?} interrupts on its I/O queues"
        _ok=1
        [ "${_used:-0}" -gt 0 ] && [ "${_relayed:-1}" -eq 0 ] && [ "${_irqs:-0}" -gt 0 ] && _ok=0
        ;;
    *)
        # refvmm's own counters, printed on SIGUSR1 at the end mark (while the guest still has its vectors).
        _dev=$(sed -n 's/^[0-9.]* Device [0-9a-f:.]* (.*): //p' "$_log" | head -n 1)
        _vec=$(echo "$_dev" | tr ' ' '\n' | sed -n 's/^msix-irqfd-vectors=//p')
        _pend=$(echo "$_dev" | tr ' ' '\n' | sed -n 's/^msix-pending-delivered=//p')
        _irqfd_detail="refvmm (SIGUSR1 at the end mark): ${_vec:-?} MSI-X vectors bound to a KVM irqfd, msix-pending-delivered=${_pend:-?}; the guest took ${_irqs:-?} interrupts on its I/O queues"
        _ok=1
        [ -n "$_vec" ] && [ "$_vec" -gt 0 ] && [ "$_pend" = 0 ] && [ "${_irqs:-0}" -gt 0 ] && _ok=0
        ;;
    esac
    if [ "$_ok" -eq 0 ]; then step "$_v-irqfd" OK "$_irqfd_detail"; else step "$_v-irqfd" FAIL "$_irqfd_detail"; fi

    _rss=$(stat_of "$_v" end VmRSS) _hwm=$(stat_of "$_v" end VmHWM) _thp=$(stat_of "$_v" end AnonHugePages)
    # refvmm's own view of its exits to userspace up to the end mark (its SIGUSR1 report), for compare.sh's "why".
    _own=""
    if [ "$_v" = refvmm ]; then
        _own=$(awk '$2 == "exit" && $3 ~ /^pio-(in|out)$/ && !seen[$3]++ { pio += $4 }
            $2 == "PIO" && ($NF == "\"pci-conf1\"" || $NF == "\"com1\"") && !seen[$NF]++ {
                for (i = 3; i <= NF; i++) if ($i ~ /^(reads|writes)=/) { split($i, kv, "="); n[$NF] += kv[2] } }
            END { printf " own-pio-exits=%d own-conf1-exits=%d own-com1-exits=%d", pio, n["\"pci-conf1\""], n["\"com1\""] }' "$_log")
    fi
    echo "TESTBED: L3LINUX $_v rc=$RC fails=$(grep -c '^[0-9.]* L3: STEP [^ ]* FAIL' "$_log") init=${_init:-?} guest-uptime-at-init=$(result_of "$_v" uptime-at-init) ios=$_ios guest-seconds=$(result_of "$_v" guest-seconds) l2-seconds=$(elapsed "/tmp/l3linux-$_v.t-begin" "/tmp/l3linux-$_v.t-end") io-irqs=${_irqs:-?} io-queues=$(result_of "$_v" io-queues) exits-total=$(stat_of "$_v" end exits) exits-window=$_win exits-idle=$_idle exits-net=$_net io-exits=$(net "$_v" io_exits) mmio-exits=$(net "$_v" mmio_exits) halt-exits=$(net "$_v" halt_exits) irq-exits=$(net "$_v" irq_exits) irq-window-exits=$(net "$_v" irq_window_exits) irq-injections=$(net "$_v" irq_injections) insn-emulation=$(net "$_v" insn_emulation) rss-kib=${_rss:-?} hwm-kib=${_hwm:-?} thp-kib=${_thp:-?} ram-mib=$L3_MEM_MIB$_own"
}

# ---- set-up -------------------------------------------------------------------------------------------------
grep -q ' /sys/kernel/debug ' /proc/mounts || mount -t debugfs none /sys/kernel/debug
[ -d "$KVMDBG" ] || { step l3linux-meter FAIL "no $KVMDBG (debugfs) in L2"; exit 1; }
# quiet: every console character is an exit to the VMM's 16550 in L2, and a full boot log (~400 lines) costs
# about 15 s there, the same for both VMMs; warnings, errors and panics still show. TESTBED_L3_APPEND=loglevel=8
# brings the whole log back (the later word wins).
# lapic=notscdeadline: both VMMs offer the TSC-deadline timer, and in this bed (nested SVM under TCG) a deadline
# L3 arms sometimes never fires: always for QEMU's guest on the own L2 kernel, and once in four passes for
# refvmm's on Debian's ("rcu_preempt kthread timer wakeup didn't happen ... Possible timer handling issue on
# cpu=0", then a hang). Both guests use the local APIC's one-shot timer instead, the same timer for both.
CMDLINE_BASE="console=ttyS0 panic=-1 quiet lapic=notscdeadline${L3_APPEND:+ $L3_APPEND}"
note "L3 Linux passes: $L3_PASSES; $(du -k "$KERNEL" | cut -f1) KiB kernel, $(du -k "$INITRD" | cut -f1) KiB initramfs, ${L3_MEM_MIB} MiB, $L3_CPUS vCPUs, $NVME_BDF passed through"

# boot_pass VMM: one boot of L3 Linux under VMM with CMDLINE (run_vmm sets RC and the pass's log); 1 when the VMM
# cannot run at all (its step already failed).
boot_pass() {
    case $1 in
    qemu)
        LD_LIBRARY_PATH=$L3/qemu/lib
        export LD_LIBRARY_PATH
        run_vmm qemu "$L3/qemu/bin/qemu-system-x86_64" -L "$L3/qemu/share" \
            -machine q35 -accel kvm -cpu host -smp "$L3_CPUS" -m "${L3_MEM_MIB}M" \
            -kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE" \
            -device "vfio-pci,host=$NVME_BDF" -nographic -nodefaults -serial stdio -no-reboot \
            -D /tmp/l3linux-qemu.trace -trace vfio_msix_vector_do_use -trace vfio_msi_interrupt
        unset LD_LIBRARY_PATH
        ;;
    refvmm)
        if ! refvmm run --help 2>&1 | grep -q -- '--kernel'; then
            step refvmm-boot FAIL "this refvmm cannot boot Linux: 'refvmm run --help' has no --kernel option (issue 10); TESTBED_L3_LINUX=qemu runs the QEMU pass alone"
            echo "TESTBED: L3LINUX refvmm rc=none fails=1"
            return 1
        fi
        # shellcheck disable=SC2086 # L3_REFVMM_ARGS is a list of arguments
        run_vmm refvmm refvmm run --kernel "$KERNEL" --initramfs "$INITRD" --cmdline "$CMDLINE" \
            --memory "${L3_MEM_MIB}M" --cpus "$L3_CPUS" --device "$NVME_BDF" --show-counters --timeout $((L3_TIMEOUT - 10)) \
            $L3_REFVMM_ARGS
        ;;
    *)
        step "$1-boot" FAIL "unknown VMM '$1' in TESTBED_L3_LINUX (qemu, refvmm)"
        return 1
        ;;
    esac
    return 0
}

# timer_stalled VMM: the pass hit its time limit without finishing, and L3's kernel said why: its timers stopped
# firing (an RCU stall, "timer wakeup didn't happen"). In this bed that is the emulator's (nested SVM under TCG: a
# timer L3 arms sometimes never fires, under either VMM; README.md, "What it covers"), not the VMM's.
timer_stalled() {
    case $RC in 124 | 137) ;; *) return 1 ;; esac
    ! grep -q "^[0-9.]* L3: DONE" "/tmp/l3linux-$1.log" &&
        grep -qE "rcu: INFO: rcu_(preempt|sched) (self-)?detected stall|timer wakeup didn't happen" "/tmp/l3linux-$1.log"
}

PREV=""

for VMM in $L3_PASSES; do
    # Between passes: the device must be on vfio-pci (the previous VMM released its group and reset the function
    # when it exited, or died with it); bind it again if something moved it.
    if [ "$(driver_of "$NVME_BDF")" != vfio-pci ]; then
        note "$NVME_BDF is on '$(driver_of "$NVME_BDF")' before the $VMM pass: binding it to vfio-pci again"
        echo vfio-pci >"/sys/bus/pci/devices/$NVME_BDF/driver_override"
        [ -e "/sys/bus/pci/devices/$NVME_BDF/driver" ] && echo "$NVME_BDF" >"/sys/bus/pci/devices/$NVME_BDF/driver/unbind"
        echo "$NVME_BDF" >/sys/bus/pci/drivers_probe
    fi
    if [ "$(driver_of "$NVME_BDF")" != vfio-pci ]; then
        step "$VMM-device" FAIL "$NVME_BDF is on '$(driver_of "$NVME_BDF")', not vfio-pci, before the $VMM pass"
        continue
    fi
    CMDLINE="$CMDLINE_BASE l3.vmm=$VMM l3.wlba=$(wlba "$VMM")"
    # The later pass also reads the block the earlier one wrote: both VMMs' writes reached the same disk.
    [ -n "$PREV" ] && CMDLINE="$CMDLINE l3.check=$(wlba "$PREV"):$PREV"
    boot_pass "$VMM" || continue
    # A timer stall of the emulator's gets one more boot, said in a NOTE; a second stall fails the pass as usual.
    if timer_stalled "$VMM"; then
        note "$VMM pass: L3's timers stopped firing ($(grep -m 1 -oE "rcu: INFO: [^:]*|timer wakeup didn't happen" "/tmp/l3linux-$VMM.log")) and it hit its time limit: nested SVM under TCG (README.md, \"What it covers\"); booting it once more"
        boot_pass "$VMM" || continue
    fi
    check_pass "$VMM"
    grep -q "^[0-9.]* L3: STEP write-block OK" "/tmp/l3linux-$VMM.log" && PREV=$VMM
done
exit "$FAILS"
