#ifndef COFFER_CLINUX_SHIM_H
#define COFFER_CLINUX_SHIM_H
// Linux calls that Swift's Glibc module does not import (they need _GNU_SOURCE).
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <fcntl.h>
#include <malloc.h>

/// Starts writeback of [offset, offset + count) without waiting (sync_file_range, SYNC_FILE_RANGE_WRITE).
static inline int coffer_start_writeback(int fd, long long offset, long long count) {
    return sync_file_range(fd, offset, count, SYNC_FILE_RANGE_WRITE);
}

/// Waits until [offset, offset + count) is written back (started earlier), so dirty pages stay bounded.
static inline int coffer_wait_writeback(int fd, long long offset, long long count) {
    return sync_file_range(fd, offset, count, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
}

/// Fixes glibc's mmap threshold: allocations of `bytes` or more are mapped and unmapped, never kept in an arena.
static inline int coffer_set_mmap_threshold(int bytes) {
    return mallopt(M_MMAP_THRESHOLD, bytes);
}
#endif
