#ifndef COFFER_CLINUX_SHIM_H
#define COFFER_CLINUX_SHIM_H
// Linux calls and flags that Swift's Glibc module does not import (O_DIRECT needs _GNU_SOURCE; mallopt is in malloc.h).
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <fcntl.h>
#include <malloc.h>

/// Fixes glibc's mmap threshold: allocations of `bytes` or more are mapped and unmapped, never kept in an arena.
static inline int coffer_set_mmap_threshold(int bytes) {
    return mallopt(M_MMAP_THRESHOLD, bytes);
}
#endif
