#ifndef COFFER_CLINUX_SHIM_H
#define COFFER_CLINUX_SHIM_H
// Linux calls and flags that Swift's Glibc module does not import (O_DIRECT needs _GNU_SOURCE; mallopt is in malloc.h;
// MAP_FAILED is a cast Swift cannot import).
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <fcntl.h>
#include <malloc.h>
#include <sys/mman.h>
#include <stdint.h>
#include <sys/prctl.h>

/// The head of Linux's `struct tcp_info` (<linux/tcp.h>), field for field up to `tcpi_notsent_bytes` (Linux 4.6):
/// glibc's <netinet/tcp.h> stops before `tcpi_bytes_acked`, and <linux/tcp.h> cannot be included beside it. The kernel
/// only ever adds fields at the end, and `getsockopt(TCP_INFO)` copies as many bytes as it is asked for.
struct coffer_tcp_info {
    uint8_t state, ca_state, retransmits, probes, backoff, options, window_scales, flags;
    uint32_t rto, ato, snd_mss, rcv_mss;
    uint32_t unacked, sacked, lost, retrans, fackets;
    uint32_t last_data_sent, last_ack_sent, last_data_recv, last_ack_recv;
    uint32_t pmtu, rcv_ssthresh, rtt, rttvar, snd_ssthresh, snd_cwnd, advmss, reordering;
    uint32_t rcv_rtt, rcv_space;
    uint32_t total_retrans;
    uint64_t pacing_rate, max_pacing_rate;
    uint64_t bytes_acked, bytes_received;
    uint32_t segs_out, segs_in;
    uint32_t notsent_bytes;
};

/// Fixes glibc's mmap threshold: allocations of `bytes` or more are mapped and unmapped, never kept in an arena.
static inline int coffer_set_mmap_threshold(int bytes) {
    return mallopt(M_MMAP_THRESHOLD, bytes);
}

/// Names the calling thread for the kernel (`comm`, cut to its 15 bytes), as top, ps and perf show it.
static inline int coffer_name_this_thread(const char *name) {
    return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
}

/// A private anonymous mapping of `length` zeroed bytes, or NULL.
static inline void *coffer_map_anonymous(size_t length) {
    void *mapping = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return mapping == MAP_FAILED ? NULL : mapping;
}

/// Locks a range as its pages are first touched (not all at once), and keeps it out of core dumps.
static inline int coffer_lock_on_fault(void *start, size_t length) {
    (void)madvise(start, length, MADV_DONTDUMP);
    return mlock2(start, length, MLOCK_ONFAULT);
}

/// Faults in, writable, the whole pages of [start, start + length) in one call (MADV_POPULATE_WRITE, Linux 5.14):
/// cheaper than a trap per page, and done by the calling thread instead of whichever thread writes first. `start`
/// must be page-aligned. An older kernel's EINVAL only means the pages are faulted in as they are written.
static inline int coffer_prefault_write(void *start, size_t length) {
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
    return madvise(start, length, MADV_POPULATE_WRITE);
}

/// Makes this process non-dumpable: no core file, and no ptrace or /proc/PID/mem by other processes of the same
/// uid (only by root, or a holder of CAP_SYS_PTRACE). prctl is variadic, so Swift cannot call it directly.
static inline int coffer_forbid_dumps(void) {
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

/// pipe2, bound by its symbol (<unistd.h> declares it only under _GNU_SOURCE, and including it here declares an
/// `environ` that clashes with Glibc's). With O_CLOEXEC, a pipe whose ends no child another thread spawns inherits.
extern int coffer_pipe2(int fds[2], int flags) __asm__("pipe2");

/// Makes the spawned child close every descriptor from `lowest` up before it runs (glibc 2.34's
/// posix_spawn_file_actions_addclosefrom_np, bound by its symbol: <spawn.h> declares it only under _GNU_SOURCE, and
/// including it here brings a <sys/select.h> whose fd_set clashes with the one Dispatch's module has). SwiftNIO opens
/// its sockets without close-on-exec, so without this a child (a database server a test starts, an agent) inherits
/// every connection open at that moment in any thread, and holds it open after this process closes its copy: the
/// server at the other end never sees the connection end (its session, and any lock it held, outlive the client).
extern int coffer_spawn_close_from(void *actions, int lowest) __asm__("posix_spawn_file_actions_addclosefrom_np");

#endif
