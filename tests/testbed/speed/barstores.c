/*
 * barstores: L2's own stores into a device BAR through its VFIO mmap, the host-side reference of the speed
 * pass's large-BAR comparison (issue 15): the L3 guest `bar_stores` does the same stores into the same BAR mapped
 * into its address space by the VMM, and the bed compares the two rates.
 *
 *   barstores BDF BAR BYTES
 *
 * Opens the function through the type1 container (/dev/vfio/vfio and its group), sets Memory Space Enable in its
 * Command register (through the VFIO config region), mmaps the BAR region and stores into it in two passes, each
 * timed by the TSC (the guest uses the same clock: L3's TSC runs at L2's rate):
 *
 *   cold: one 8-byte store per 4 KiB page over the whole BAR: the first touch of each page, so this includes
 *         the page faults that map the BAR into this process (vfio-pci's fault handler);
 *   warm: BYTES bytes of 8-byte stores over the BAR (over its first BYTES when it is larger), round after round:
 *         the steady store rate;
 *   hot:  as many stores over the first 1 MiB of the BAR only (few pages: few TLB misses, neither the CPU's nor,
 *         in the test bed, TCG's software TLB);
 *   ram:  the hot pass's stores into 1 MiB of this process's own memory instead: the control, what a store
 *         costs here where no device is involved. Hot and ram alternate in SLICES slices, so that both sample
 *         the same stretch of time (the emulator's speed drifts between passes by more than they differ).
 * Warm, hot and ram run the same four-instruction loop as the guest's (store_pass): in the test bed every
 * instruction is emulated, so both sides must execute the same ones per store.
 *
 * Prints `BARSTORES bar-bytes=N mmap-us=U cold-pages=N cold-tsc=T warm-bytes=N warm-tsc=T hot-bytes=N hot-tsc=T
 * ram-bytes=N ram-tsc=T`, the same figures the guest reports. Exit status 0, or 1 with a message naming what failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* The hot pass's window, as the guest's HOT_WINDOW. */
#define HOT_WINDOW (1u << 20)
/* How many alternating slices the hot and ram passes are cut into, as the guest's SLICES. */
#define SLICES 16

static uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* Rounds first..first + reps of one 8-byte store (of the round's number) to every quadword of [p, p + len): the
 * guest's loop. */
static void store_pass(volatile uint64_t *p, uint64_t len, uint64_t first, uint64_t reps)
{
    for (uint64_t round = first; round < first + reps; round++) {
        uintptr_t cur = (uintptr_t)p, end = (uintptr_t)p + len;
        __asm__ volatile("2: movq %2, (%0)\n\t"
                         "addq $8, %0\n\t"
                         "cmpq %1, %0\n\t"
                         "jne 2b"
                         : "+r"(cur)
                         : "r"(end), "r"(round)
                         : "memory", "cc");
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int fail(const char *what, const char *name)
{
    fprintf(stderr, "barstores: %s %s: %s\n", what, name, strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: barstores BDF BAR BYTES\n");
        return 2;
    }
    const char *bdf = argv[1];
    unsigned bar = (unsigned)atoi(argv[2]);
    uint64_t bytes = strtoull(argv[3], NULL, 0) & ~7ull;
    if (bar > 5 || bytes == 0) {
        fprintf(stderr, "barstores: BAR must be 0-5 and BYTES at least 8\n");
        return 2;
    }

    /* The function's IOMMU group, from its sysfs link. */
    char link[256], target[256], node[64];
    snprintf(link, sizeof link, "/sys/bus/pci/devices/%s/iommu_group", bdf);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0)
        return fail("readlink", link);
    target[n] = 0;
    snprintf(node, sizeof node, "/dev/vfio/%s", basename(target));

    int container = open("/dev/vfio/vfio", O_RDWR);
    if (container < 0)
        return fail("open", "/dev/vfio/vfio");
    int group = open(node, O_RDWR);
    if (group < 0)
        return fail("open", node);
    struct vfio_group_status gs = {.argsz = sizeof gs};
    if (ioctl(group, VFIO_GROUP_GET_STATUS, &gs) != 0 || !(gs.flags & VFIO_GROUP_FLAGS_VIABLE)) {
        fprintf(stderr, "barstores: group %s is not viable (every device of the group must be on vfio-pci)\n", node);
        return 1;
    }
    if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) != 0)
        return fail("VFIO_GROUP_SET_CONTAINER", node);
    if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) != 0)
        return fail("VFIO_SET_IOMMU type1v2", "/dev/vfio/vfio");
    int device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
    if (device < 0)
        return fail("VFIO_GROUP_GET_DEVICE_FD", bdf);

    /* Memory Space Enable (Command bit 1), or the BAR decodes nothing. */
    struct vfio_region_info cfg = {.argsz = sizeof cfg, .index = VFIO_PCI_CONFIG_REGION_INDEX};
    if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &cfg) != 0)
        return fail("VFIO_DEVICE_GET_REGION_INFO config", bdf);
    uint16_t cmd;
    if (pread(device, &cmd, 2, (off_t)(cfg.offset + 4)) != 2)
        return fail("read Command of", bdf);
    cmd |= 2;
    if (pwrite(device, &cmd, 2, (off_t)(cfg.offset + 4)) != 2)
        return fail("write Command of", bdf);

    struct vfio_region_info reg = {.argsz = sizeof reg, .index = bar};
    if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &reg) != 0)
        return fail("VFIO_DEVICE_GET_REGION_INFO BAR of", bdf);
    if (!(reg.flags & VFIO_REGION_INFO_FLAG_MMAP) || reg.size < 4096) {
        fprintf(stderr, "barstores: BAR%u of %s (%llu bytes) cannot be mmapped\n", bar, bdf,
                (unsigned long long)reg.size);
        return 1;
    }
    double t = now();
    volatile uint64_t *p = mmap(NULL, reg.size, PROT_READ | PROT_WRITE, MAP_SHARED, device, (off_t)reg.offset);
    if (p == MAP_FAILED)
        return fail("mmap BAR of", bdf);
    double mmap_s = now() - t;

    uint64_t pages = reg.size / 4096, i;
    uint64_t c0 = rdtsc();
    for (i = 0; i < pages; i++)
        p[i * 512] = i;
    uint64_t cold = rdtsc() - c0;
    uint64_t warm_len = reg.size < bytes ? reg.size : bytes, warm_reps = bytes / warm_len;
    c0 = rdtsc();
    store_pass(p, warm_len, 0, warm_reps);
    uint64_t warm = rdtsc() - c0;
    uint64_t hot_len = reg.size < HOT_WINDOW ? reg.size : HOT_WINDOW, hot_reps = bytes / hot_len;
    if (hot_reps == 0)
        hot_reps = 1;
    /* The control's memory, touched by one untimed round first (as the hot pass's pages were by the warm pass). */
    volatile uint64_t *ram = aligned_alloc(4096, HOT_WINDOW);
    if (!ram)
        return fail("aligned_alloc", "the ram pass's 1 MiB");
    store_pass(ram, HOT_WINDOW, 0, 1);
    uint64_t hot = 0, ram_tsc = 0;
    for (uint64_t slice = 0; slice < SLICES; slice++) {
        uint64_t first = hot_reps * slice / SLICES, end = hot_reps * (slice + 1) / SLICES;
        c0 = rdtsc();
        store_pass(p, hot_len, first, end - first);
        uint64_t m = rdtsc();
        store_pass(ram, HOT_WINDOW, first, end - first);
        hot += m - c0;
        ram_tsc += rdtsc() - m;
    }
    printf("BARSTORES bar-bytes=%llu mmap-us=%.0f cold-pages=%llu cold-tsc=%llu warm-bytes=%llu warm-tsc=%llu "
           "hot-bytes=%llu hot-tsc=%llu ram-bytes=%llu ram-tsc=%llu\n",
           (unsigned long long)reg.size, mmap_s * 1e6, (unsigned long long)pages, (unsigned long long)cold,
           (unsigned long long)(warm_len * warm_reps), (unsigned long long)warm,
           (unsigned long long)(hot_len * hot_reps), (unsigned long long)hot,
           (unsigned long long)HOT_WINDOW * hot_reps, (unsigned long long)ram_tsc);
    return 0;
}
