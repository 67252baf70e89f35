/*
 * vmmeter: the one meter of the test bed's speed pass (issue 15), the same for every VMM.
 *
 *   vmmeter [--stop-after SECS] [--stop-on TEXT] [--timeout SECS] -- VMM ARGS...
 *
 * Starts the VMM with its standard output and error on a pipe, and times it on L2's clock (CLOCK_BOOTTIME, the
 * clock of /proc/uptime) from KVM's side, which no VMM can bend:
 *
 *   - vm-created:  the VMM holds a VM file descriptor (KVM_CREATE_VM), whose statistics are in KVM's per-VM
 *                  debugfs directory /sys/kernel/debug/kvm/<pid>-<fd>;
 *   - first-exit:  that VM's `exits` statistic (every vCPU exit, summed over the vCPUs) first became non-zero:
 *                  a vCPU ran guest code. Every VMM's first guest instruction is followed by an exit within a
 *                  few instructions (a port access of the firmware or guest, or the host's next timer tick), so
 *                  this is "start to first instruction" to within the poll period (2 ms) and one tick.
 *
 * Every line of the VMM's output is copied to standard output as `  | LINE`. A line with `MARK <name>` in it
 * (a guest's marks) makes the meter print the VM's counters at that moment. The meter's own lines:
 *
 *   METER start pid=P t=T wall=W                  T: L2 uptime in seconds when the VMM was started; W: the same
 *                                                 moment on the wall clock (QEMU's trace timestamps use it)
 *   METER vm-created t=T after=S dir=PID-FD       S: seconds since the start
 *   METER first-exit t=T after=S
 *   METER mark=NAME t=T exits=N mmio_exits=N io_exits=N pf_fixed=N halt_exits=N
 *   METER end status=N after=S                   the VMM's exit status (128+signal when killed)
 *
 * --stop-after SECS sends SIGTERM that long after the first exit (then SIGKILL after 5 s more), for a VMM whose
 * guest would run on (QEMU's firmware); --stop-on TEXT does the same once a line of its output contains TEXT;
 * --timeout SECS kills the VMM (SIGKILL) that long after its start.
 * Exit status: the VMM's.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KVM_DEBUGFS "/sys/kernel/debug/kvm"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The VM directory of process `pid` (NAME "PID-FD" into `dir`), or 0 when it has no VM yet. KVM names the directory
 * after the VM's file descriptor, which /proc/PID/fd shows as "anon_inode:kvm-vm": finding it there does not read
 * the debugfs directory while KVM_CREATE_VM is adding to it. */
static int find_vm_dir(pid_t pid, char *dir, size_t len)
{
    char path[64], link[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    struct dirent *e;
    int found = 0;
    if (!d)
        return 0;
    while (!found && (e = readdir(d)) != NULL) {
        ssize_t n = readlinkat(dirfd(d), e->d_name, link, sizeof link - 1);
        if (n <= 0)
            continue;
        link[n] = 0;
        if (strcmp(link, "anon_inode:kvm-vm") == 0) {
            snprintf(dir, len, "%d-%d", (int)pid, atoi(e->d_name));
            found = 1;
        }
    }
    closedir(d);
    return found;
}

/* One statistic of the VM (summed over its vCPUs by KVM), or -1 when unreadable (the VM is gone). */
static long long vm_stat(const char *dir, const char *name)
{
    char path[512], buf[64];
    snprintf(path, sizeof path, KVM_DEBUGFS "/%s/%s", dir, name);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t r = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (r <= 0)
        return -1;
    buf[r] = 0;
    return strtoll(buf, NULL, 10);
}

static double wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void usage(void)
{
    fprintf(stderr, "usage: vmmeter [--stop-after SECS] [--stop-on TEXT] [--timeout SECS] -- VMM ARGS...\n");
    exit(2);
}

int main(int argc, char **argv)
{
    double stop_after = -1, timeout = 0;
    const char *stop_on = NULL;
    int i = 1;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else if (strcmp(argv[i], "--stop-after") == 0 && i + 1 < argc) {
            stop_after = atof(argv[++i]);
        } else if (strcmp(argv[i], "--stop-on") == 0 && i + 1 < argc) {
            stop_on = argv[++i];
        } else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
            timeout = atof(argv[++i]);
        } else {
            usage();
        }
    }
    if (i >= argc)
        usage();

    int out[2];
    if (pipe(out) != 0) {
        perror("vmmeter: pipe");
        return 125;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    double t0 = now(), w0 = wall();
    pid_t pid = fork();
    if (pid < 0) {
        perror("vmmeter: fork");
        return 125;
    }
    if (pid == 0) {
        dup2(out[1], 1);
        dup2(out[1], 2);
        close(out[0]);
        close(out[1]);
        execvp(argv[i], argv + i);
        fprintf(stderr, "vmmeter: cannot run %s: %s\n", argv[i], strerror(errno));
        _exit(127);
    }
    close(out[1]);
    printf("METER start pid=%d t=%.3f wall=%.6f\n", (int)pid, t0, w0);

    char dir[256] = "", line[4096];
    size_t used = 0;
    double t_exit = 0, t_term = 0;
    int stop_seen = 0;
    int open_pipe = 1, status = 0, exited = 0;
    while (open_pipe || !exited) {
        struct pollfd p = {.fd = out[0], .events = POLLIN};
        /* A 2 ms period: the VMM shares L2's two emulated CPUs with the meter. */
        int ready = open_pipe ? poll(&p, 1, 2) : (usleep(2000), 0);
        double t = now();
        if (ready > 0) {
            ssize_t r = read(out[0], line + used, sizeof line - 1 - used);
            if (r <= 0) {
                open_pipe = 0;
                if (used) { /* a last line without its newline */
                    line[used] = 0;
                    printf("  | %s\n", line);
                    used = 0;
                }
            } else {
                used += (size_t)r;
                char *start = line, *nl;
                while ((nl = memchr(start, '\n', used - (size_t)(start - line))) != NULL) {
                    *nl = 0;
                    if (nl > start && nl[-1] == '\r')
                        nl[-1] = 0;
                    printf("  | %s\n", start);
                    if (stop_on && strstr(start, stop_on))
                        stop_seen = 1;
                    char *mark = strstr(start, "MARK ");
                    if (mark && dir[0]) {
                        char name[64] = "";
                        sscanf(mark + 5, "%63s", name);
                        printf("METER mark=%s t=%.3f exits=%lld mmio_exits=%lld io_exits=%lld pf_fixed=%lld "
                               "halt_exits=%lld\n",
                               name, now(), vm_stat(dir, "exits"), vm_stat(dir, "mmio_exits"),
                               vm_stat(dir, "io_exits"), vm_stat(dir, "pf_fixed"), vm_stat(dir, "halt_exits"));
                    }
                    start = nl + 1;
                }
                used -= (size_t)(start - line);
                memmove(line, start, used);
                if (used == sizeof line - 1) { /* an overlong line: print what there is */
                    line[used] = 0;
                    printf("  | %s\n", line);
                    used = 0;
                }
            }
        }
        if (!exited) {
            if (!dir[0] && find_vm_dir(pid, dir, sizeof dir))
                printf("METER vm-created t=%.3f after=%.3f dir=%s\n", t, t - t0, dir);
            if (dir[0] && t_exit == 0 && vm_stat(dir, "exits") > 0) {
                t_exit = t;
                printf("METER first-exit t=%.3f after=%.3f\n", t, t - t0);
            }
            if (t_term == 0 && (stop_seen || (stop_after >= 0 && t_exit > 0 && t - t_exit >= stop_after))) {
                kill(pid, SIGTERM);
                t_term = t;
            }
            if ((t_term > 0 && t - t_term >= 5) || (timeout > 0 && t - t0 >= timeout))
                kill(pid, SIGKILL);
            int ws;
            if (waitpid(pid, &ws, WNOHANG) == pid) {
                exited = 1;
                status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
                printf("METER end status=%d after=%.3f\n", status, now() - t0);
            }
        }
    }
    return status;
}
