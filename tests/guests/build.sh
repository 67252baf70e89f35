#!/usr/bin/env bash
# Builds the bare-metal guest images with the installed stable toolchain (no extra target, no nightly).
#
#   tests/guests/build.sh [OUT_DIR]
#
# Prints the path of each ELF (pci_probe, nvme_e2e, bar_stores) on stdout, one per line (sizes go to stderr). With OUT_DIR, also copies them
# there as <name>.elf. Environment:
#   GUESTS_TARGET_DIR   cargo target directory (default: <repo>/target/guests)
#   GUEST_NVME_SERIAL   nvme_e2e's expected serial (default: $TESTBED_SERIAL, else REFVMM-TESTBED-0001)
#   GUEST_PATTERN_LBA   nvme_e2e's pattern LBA (default: $TESTBED_PATTERN_LBA, else 100)
# Both can also be given on the guest's command line at run time (README.md).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${GUESTS_TARGET_DIR:-$repo/target/guests}
out=${1:-}

export GUEST_NVME_SERIAL=${GUEST_NVME_SERIAL:-${TESTBED_SERIAL:-REFVMM-TESTBED-0001}}
export GUEST_PATTERN_LBA=${GUEST_PATTERN_LBA:-${TESTBED_PATTERN_LBA:-100}}

# The flags live in tests/guests/.cargo/config.toml, which cargo reads from the working directory; flags from
# the environment (a static-pie build of refvmm, say) would replace them.
cd "$here"
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_BUILD_TARGET
CARGO_TARGET_DIR=$target cargo build --release --locked --features image --bins >&2

[ -z "$out" ] || mkdir -p "$out"
for name in pci_probe nvme_e2e bar_stores; do
    elf=$target/release/$name
    [ -f "$elf" ] || { echo "build.sh: $elf was not built" >&2; exit 1; }
    # The multiboot header must be in the first 8 KiB (QEMU looks no further); the a.out-kludge
    # addresses make QEMU load the file at 0x200000 from offset 0.
    magic_at=$(od -A d -t x4 -w4 -v -N 8192 "$elf" | awk '$2 == "1badb002" && !found { print $1; found = 1 }')
    [ -n "$magic_at" ] || { echo "build.sh: $elf has no multiboot header in its first 8 KiB" >&2; exit 1; }
    if command -v readelf >/dev/null; then
        loads=$(readelf -lW "$elf" | awk '$1 == "LOAD"')
        [ "$(printf '%s\n' "$loads" | wc -l)" -eq 1 ] || { echo "build.sh: $elf must have exactly one PT_LOAD" >&2; exit 1; }
        # LOAD offset vaddr paddr filesz memsz flags align
        read -r _ off vaddr _ filesz memsz _ align <<<"$loads"
        [ "$off" = 0x000000 ] && [ "$align" = 0x200000 ] || {
            echo "build.sh: $elf: PT_LOAD offset $off align $align (want 0 and 0x200000)" >&2; exit 1; }
        printf 'build.sh: %s: %s bytes on disk; loads %d bytes at %s (%d with .bss, stack and page tables); multiboot header at file offset %d\n' \
            "$name" "$(stat -c %s "$elf")" "$((filesz))" "$vaddr" "$((memsz))" "$((10#$magic_at))" >&2
    fi
    if [ -n "$out" ]; then
        cp "$elf" "$out/$name.elf"
        echo "$out/$name.elf"
    else
        echo "$elf"
    fi
done
