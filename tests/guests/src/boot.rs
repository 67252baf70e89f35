//! Entry stubs: the multiboot header, the 32-bit multiboot entry, the 64-bit ELF entry, and the
//! interrupt and exception stubs.
//!
//! Both entries end in `guests_common64`, which loads the guest's own GDT, stack and segment
//! registers, enables SSE, zeroes `.bss` and calls `guests_rust_entry(cmdline, mb_info, mb_magic)`
//! (defined by [`guest_main!`](crate::guest_main)). See README.md, "Boot contract".
//!
//! Page tables: each entry builds its own (identity map of 0-4 GiB in 2 MiB pages, the top GiB —
//! the PCI hole, the IOAPIC and the local APIC — uncached with PCD|PWT), so a 64-bit loader only
//! has to map the image itself identically.
//!
//! Interrupts run on the interrupted stack (no TSS, no IST). That clobbers the 128-byte red zone of
//! the interrupted function, which is why the image is built with `-C no-redzone` and why
//! interrupts are only ever enabled inside the `sti; hlt; cli` windows of [`crate::time`], where
//! no `core` code is running (its functions keep their red zone even after LTO). The interrupt
//! stubs touch no SSE register (and the image is built without SSE: see `.cargo/config.toml`).

core::arch::global_asm!(
    r#"
/* ---- multiboot v1 header, a.out kludge (flag 16): QEMU -kernel takes the addresses from here ---- */
.section .multiboot, "a"
.balign 4
.global guests_mb_header
guests_mb_header:
    .long 0x1BADB002
    .long 0x00010002                      /* bit 1: memory info wanted; bit 16: address fields valid */
    .long -(0x1BADB002 + 0x00010002)
    .long guests_mb_header                /* header_addr */
    .long __image_start                   /* load_addr: the file offset of an address is address - 0x200000 */
    .long __load_end                      /* load_end_addr */
    .long __image_end                     /* bss_end_addr: the loader zeroes up to here */
    .long guests_mb_entry32               /* entry_addr */

/* ---- boot data ---- */
.section .data.guests_boot, "aw"
.balign 16
guests_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF              /* 0x08: 64-bit code, ring 0, accessed */
    .quad 0x00CF93000000FFFF              /* 0x10: data, ring 0, 4 GiB flat, accessed */
guests_gdt_end:
.balign 8
    .word 0, 0, 0                         /* pad so that the base below is 8-byte aligned */
guests_gdt_ptr:
    .word guests_gdt_end - guests_gdt - 1
    .quad guests_gdt                      /* read as 32 bits in 32-bit mode: fine, it is below 4 GiB */
guests_mb_magic:
    .long 0
guests_mb_info:
    .long 0

.section .boot_tables, "aw", @nobits
.balign 4096
.global guests_boot_pml4
guests_boot_pml4:
    .skip 4096
guests_boot_pdpt:
    .skip 4096
guests_boot_pd:
    .skip 4 * 4096

.section .boot_stack, "aw", @nobits
.balign 16
.global guests_boot_stack_bottom
guests_boot_stack_bottom:
    .skip 65536
.global guests_boot_stack_top
guests_boot_stack_top:

/* ---- 32-bit multiboot entry: protected mode, paging off, EAX = 0x2BADB002, EBX = multiboot info ---- */
.section .text.boot, "ax"
.code32
.global guests_mb_entry32
guests_mb_entry32:
    cli
    cld
    movl %eax, guests_mb_magic
    movl %ebx, guests_mb_info
    movl $guests_boot_pml4, %edi          /* zero PML4, PDPT and the 4 PDs */
    movl $(6 * 4096 / 4), %ecx
    xorl %eax, %eax
    rep stosl
    movl $guests_boot_pdpt, %eax
    orl $3, %eax
    movl %eax, guests_boot_pml4
    movl $guests_boot_pd, %eax
    orl $3, %eax
    movl %eax, guests_boot_pdpt
    addl $4096, %eax
    movl %eax, guests_boot_pdpt + 8
    addl $4096, %eax
    movl %eax, guests_boot_pdpt + 16
    addl $4096, %eax
    movl %eax, guests_boot_pdpt + 24
    movl $guests_boot_pd, %edi            /* 2048 x 2 MiB: present, writable, large page */
    movl $0x83, %eax
    movl $2048, %ecx
1:  movl %eax, (%edi)
    addl $8, %edi
    addl $0x200000, %eax
    decl %ecx
    jnz 1b
    movl $(guests_boot_pd + 3 * 4096), %edi   /* 3-4 GiB: PCD | PWT */
    movl $512, %ecx
2:  orl $0x18, (%edi)
    addl $8, %edi
    decl %ecx
    jnz 2b
    movl %cr4, %eax
    orl $0x20, %eax                       /* PAE */
    movl %eax, %cr4
    movl $guests_boot_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx                /* EFER.LME */
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax                 /* PG | PE */
    movl %eax, %cr0
    lgdt guests_gdt_ptr
    ljmp $0x08, $guests_mb_entry64

.code64
guests_mb_entry64:
    xorl %edi, %edi                       /* the command line comes from the multiboot info */
    movl guests_mb_info(%rip), %esi
    movl guests_mb_magic(%rip), %edx
    jmp guests_common64

/* ---- 64-bit ELF entry: long mode, ring 0, the image identity-mapped, RDI = command line or 0 ---- */
.global _start64
_start64:
    cli
    cld
    movq %rdi, %r12
    leaq guests_boot_pml4(%rip), %rdi
    movl $(6 * 4096 / 8), %ecx
    xorl %eax, %eax
    rep stosq
    leaq guests_boot_pdpt(%rip), %rax
    orq $3, %rax
    movq %rax, guests_boot_pml4(%rip)
    leaq guests_boot_pd(%rip), %rax
    orq $3, %rax
    leaq guests_boot_pdpt(%rip), %rdi
    movq %rax, 0(%rdi)
    addq $4096, %rax
    movq %rax, 8(%rdi)
    addq $4096, %rax
    movq %rax, 16(%rdi)
    addq $4096, %rax
    movq %rax, 24(%rdi)
    leaq guests_boot_pd(%rip), %rdi
    movl $0x83, %eax
    movl $2048, %ecx
1:  movq %rax, (%rdi)
    addq $8, %rdi
    addq $0x200000, %rax
    decl %ecx
    jnz 1b
    leaq (guests_boot_pd + 3 * 4096)(%rip), %rdi
    movl $512, %ecx
2:  orq $0x18, (%rdi)
    addq $8, %rdi
    decl %ecx
    jnz 2b
    leaq guests_boot_pml4(%rip), %rax
    movq %rax, %cr3
    movq %r12, %rdi
    xorl %esi, %esi                       /* no multiboot info */
    xorl %edx, %edx
    jmp guests_common64

/* ---- common 64-bit start: GDT, segments, stack, SSE, .bss, Rust ---- */
guests_common64:
    lgdt guests_gdt_ptr(%rip)
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    leaq guests_boot_stack_top(%rip), %rsp
    movq %rdi, %r12
    movq %rsi, %r13
    movq %rdx, %r14
    pushq $0x08                           /* reload CS from our GDT */
    leaq 3f(%rip), %rax
    pushq %rax
    lretq
3:  movq %cr0, %rax
    andq $-13, %rax                       /* clear EM (bit 2) and TS (bit 3) */
    orq $0x22, %rax                       /* MP | NE */
    movq %rax, %cr0
    movq %cr4, %rax
    orq $0x600, %rax                      /* OSFXSR | OSXMMEXCPT */
    movq %rax, %cr4
    fninit
    leaq __bss_start(%rip), %rdi
    leaq __bss_end(%rip), %rcx
    subq %rdi, %rcx
    shrq $3, %rcx
    xorl %eax, %eax
    rep stosq
    movq %r12, %rdi
    movq %r13, %rsi
    movq %r14, %rdx
    call guests_rust_entry
4:  cli
    hlt
    jmp 4b

/* ---- exceptions 0-31: push (error code or 0), the vector, then save the registers for Rust ---- */
.macro GUESTS_EXC n, has_error
guests_exc_\n:
    .if \has_error == 0
    pushq $0
    .endif
    pushq $\n
    jmp guests_exc_common
.endm
GUESTS_EXC 0, 0
GUESTS_EXC 1, 0
GUESTS_EXC 2, 0
GUESTS_EXC 3, 0
GUESTS_EXC 4, 0
GUESTS_EXC 5, 0
GUESTS_EXC 6, 0
GUESTS_EXC 7, 0
GUESTS_EXC 8, 1
GUESTS_EXC 9, 0
GUESTS_EXC 10, 1
GUESTS_EXC 11, 1
GUESTS_EXC 12, 1
GUESTS_EXC 13, 1
GUESTS_EXC 14, 1
GUESTS_EXC 15, 0
GUESTS_EXC 16, 0
GUESTS_EXC 17, 1
GUESTS_EXC 18, 0
GUESTS_EXC 19, 0
GUESTS_EXC 20, 0
GUESTS_EXC 21, 1
GUESTS_EXC 22, 0
GUESTS_EXC 23, 0
GUESTS_EXC 24, 0
GUESTS_EXC 25, 0
GUESTS_EXC 26, 0
GUESTS_EXC 27, 0
GUESTS_EXC 28, 0
GUESTS_EXC 29, 1
GUESTS_EXC 30, 1
GUESTS_EXC 31, 0

guests_exc_common:
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rbx
    pushq %rbp
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    andq $-16, %rsp
    call guests_exception
    ud2

/* ---- interrupts 0x20-0x3F: count, EOI, return. No Rust, no SSE: safe at any instruction ---- */
.macro GUESTS_IRQ n
guests_irq_\n:
    lock incq (guests_irq_counts + 8 * \n)(%rip)
    pushq %rax
.if \n == 0
    /* The timer tick: re-arm (TMICT = GUESTS_TIMER_INITIAL); see lapic.rs for why. */
    pushq %rcx
    movl GUESTS_TIMER_INITIAL(%rip), %ecx
    movl $0xFEE00380, %eax
    movl %ecx, (%rax)
    popq %rcx
.endif
    movl $0xFEE000B0, %eax                /* local APIC EOI register */
    movl $0, (%rax)
    popq %rax
    iretq
.endm
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
GUESTS_IRQ \n
.endr

.global guests_isr_unexpected
guests_isr_unexpected:
    lock incq guests_unexpected_irqs(%rip)
    pushq %rax
    movl $0xFEE000B0, %eax
    movl $0, (%rax)
    popq %rax
    iretq

.global guests_isr_spurious
guests_isr_spurious:                      /* the spurious vector gets no EOI (SDM 10.9) */
    iretq

/* ---- stub address tables for the IDT ---- */
.section .rodata.guests_isr, "a"
.balign 8
.global guests_exc_stubs
guests_exc_stubs:
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad guests_exc_\n
.endr
.global guests_irq_stubs
guests_irq_stubs:
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad guests_irq_\n
.endr
"#,
    options(att_syntax)
);
