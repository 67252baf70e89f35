/*
 * kvm_exit_floor: the cheapest possible KVM_RUN loop, the floor that the kvm-runloop
 * exit_roundtrip benchmark divides by.
 *
 * It builds exactly the guest the Rust benchmark builds (64-bit long mode in ring 0 or ring 3
 * with IOPL 3, the same GDT and identity page tables as kvm_runloop::SystemTables, the same
 * two-instruction loop at the same address) and then calls KVM_RUN in a loop, doing for each
 * exit only what KVM requires: check the exit reason and, for a read, fill the data. No
 * dispatch, no counters.
 *
 * usage: kvm_exit_floor <pio-out|pio-in|mmio-write|mmio-read> <exits per round> <rounds> [0|3]
 * (the last argument is the guest ring, default 0)
 * prints one line per round: wall-clock and thread CPU nanoseconds per exit. With <rounds> = 0 it runs one round each time
 * it reads a line on stdin, until EOF, so a caller can interleave its own rounds with ours.
 *
 * Built by benches/benches/exit_roundtrip.rs with the system cc.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define RAM_SIZE (2u << 20)
#define TABLES 0x1000ull /* GDT; IDT at +0x1000; PML4 +0x2000; PDPT +0x3000; PDs +0x4000 */
#define CODE 0x10000ull
#define STACK 0x80000ull
#define MMIO_ADDR 0xd0000000ull
#define PORT 0x10

static void die(const char *what)
{
	fprintf(stderr, "kvm_exit_floor: %s: %s\n", what, strerror(errno));
	exit(1);
}

static uint64_t clock_ns(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static struct kvm_segment seg(uint16_t selector, int code)
{
	struct kvm_segment s = {
		.base = 0,
		.limit = 0xffffffff,
		.selector = selector,
		.type = code ? 0xb : 0x3,
		.present = 1,
		.dpl = selector & 3,
		.db = code ? 0 : 1,
		.s = 1,
		.l = code ? 1 : 0,
		.g = 1,
	};
	return s;
}

int main(int argc, char **argv)
{
	if (argc != 4 && argc != 5) {
		fprintf(stderr,
			"usage: %s <pio-out|pio-in|mmio-write|mmio-read> <exits> <rounds> [0|3]\n",
			argv[0]);
		return 2;
	}
	const char *kind = argv[1];
	long exits = atol(argv[2]), rounds = atol(argv[3]);
	int ring3 = argc == 5 && atoi(argv[4]) == 3;

	/* The loop body, then `jmp` back to it (eb fc: jmp -4). */
	uint8_t code[4];
	uint32_t want;
	if (!strcmp(kind, "pio-out")) {
		code[0] = 0xe6, code[1] = PORT; /* out %al,$0x10 */
		want = KVM_EXIT_IO;
	} else if (!strcmp(kind, "pio-in")) {
		code[0] = 0xe4, code[1] = PORT; /* in $0x10,%al */
		want = KVM_EXIT_IO;
	} else if (!strcmp(kind, "mmio-write")) {
		code[0] = 0x89, code[1] = 0x07; /* mov %eax,(%rdi) */
		want = KVM_EXIT_MMIO;
	} else if (!strcmp(kind, "mmio-read")) {
		code[0] = 0x8b, code[1] = 0x07; /* mov (%rdi),%eax */
		want = KVM_EXIT_MMIO;
	} else {
		fprintf(stderr, "unknown kind %s\n", kind);
		return 2;
	}
	code[2] = 0xeb, code[3] = 0xfc; /* jmp -4 */

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("open /dev/kvm");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0)
		die("KVM_SET_TSS_ADDR");

	uint8_t *mem = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap guest RAM");
	struct kvm_userspace_memory_region region = {
		.slot = 0,
		.guest_phys_addr = 0,
		.memory_size = RAM_SIZE,
		.userspace_addr = (uint64_t)(uintptr_t)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("KVM_SET_USER_MEMORY_REGION");

	/* Same GDT and page tables as kvm_runloop::SystemTables (long mode). */
	static const uint64_t gdt[] = {
		0, 0x00af9b000000ffffull, 0x00cf93000000ffffull, 0x00cf9b000000ffffull,
		0x00affb000000ffffull, 0x00cff3000000ffffull, 0x00cffb000000ffffull,
	};
	memcpy(mem + TABLES, gdt, sizeof(gdt));
	uint64_t *pml4 = (uint64_t *)(mem + TABLES + 0x2000);
	uint64_t *pdpt = (uint64_t *)(mem + TABLES + 0x3000);
	pml4[0] = (TABLES + 0x3000) | 7;
	for (uint64_t i = 0; i < 4; i++) {
		uint64_t pd_addr = TABLES + 0x4000 + i * 0x1000;
		uint64_t *pd = (uint64_t *)(mem + pd_addr);
		pdpt[i] = pd_addr | 7;
		for (uint64_t j = 0; j < 512; j++)
			pd[j] = (i << 30) | (j << 21) | 0x87; /* present, rw, user, 2 MiB */
	}
	memcpy(mem + CODE, code, sizeof(code));

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU");
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < 0)
		die("KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");

	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS");
	/* Selectors as kvm_runloop: 0x08/0x10 ring-0 code64/data, 0x23/0x2b ring-3 code64/data. */
	sregs.cs = seg(ring3 ? 0x23 : 0x08, 1);
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = seg(ring3 ? 0x2b : 0x10, 0);
	sregs.gdt.base = TABLES, sregs.gdt.limit = sizeof(gdt) - 1;
	sregs.idt.base = TABLES + 0x1000, sregs.idt.limit = 256 * 16 - 1;
	sregs.cr0 = 0x80000031; /* PG | NE | ET | PE */
	sregs.cr3 = TABLES + 0x2000;
	sregs.cr4 |= 0x20; /* PAE */
	sregs.efer |= 0x500; /* LMA | LME */
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS");
	struct kvm_regs regs = {
		.rip = CODE,
		.rsp = STACK,
		.rdi = MMIO_ADDR,
		.rflags = ring3 ? 0x3002 : 0x2, /* reserved bit 1; IOPL 3 for ring-3 port IO */
	};
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS");

	char line[64];
	for (long r = 0; rounds == 0 || r < rounds; r++) {
		if (rounds == 0 && !fgets(line, sizeof(line), stdin))
			break;
		uint64_t t0 = clock_ns(CLOCK_MONOTONIC), c0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
		for (long i = 0; i < exits; i++) {
			if (ioctl(vcpu, KVM_RUN, 0) < 0)
				die("KVM_RUN");
			if (run->exit_reason != want) {
				fprintf(stderr, "unexpected exit reason %u\n", run->exit_reason);
				return 1;
			}
			/* A read needs its data before the next KVM_RUN; give what an empty bus gives. */
			if (run->exit_reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_IN)
				memset((uint8_t *)run + run->io.data_offset, 0xff, run->io.size * run->io.count);
			else if (run->exit_reason == KVM_EXIT_MMIO && !run->mmio.is_write)
				memset(run->mmio.data, 0xff, run->mmio.len);
		}
		uint64_t t1 = clock_ns(CLOCK_MONOTONIC), c1 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
		printf("%.1f %.1f\n", (double)(t1 - t0) / (double)exits,
		       (double)(c1 - c0) / (double)exits);
		fflush(stdout);
	}
	return 0;
}
