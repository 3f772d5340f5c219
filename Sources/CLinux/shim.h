#ifndef COFFER_CLINUX_SHIM_H
#define COFFER_CLINUX_SHIM_H
// Linux calls and flags that Swift's Glibc module does not import (O_DIRECT needs _GNU_SOURCE; mallopt is in malloc.h;
// MAP_FAILED is a cast Swift cannot import).
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <sys/mman.h>
#include <sys/prctl.h>

/// Fixes glibc's mmap threshold: allocations of `bytes` or more are mapped and unmapped, never kept in an arena.
static inline int coffer_set_mmap_threshold(int bytes) {
    return mallopt(M_MMAP_THRESHOLD, bytes);
}

/// A private anonymous mapping of `length` zeroed bytes, or NULL.
static inline void *coffer_map_anonymous(size_t length) {
    void *mapping = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return mapping == MAP_FAILED ? NULL : mapping;
}

/// Asks for transparent huge pages over a range (a hint: the kernel may have none to give).
static inline void coffer_advise_huge_pages(void *start, size_t length) {
    (void)madvise(start, length, MADV_HUGEPAGE);
}

/// Locks a range as its pages are first touched (not all at once), and keeps it out of core dumps.
static inline int coffer_lock_on_fault(void *start, size_t length) {
    (void)madvise(start, length, MADV_DONTDUMP);
    return mlock2(start, length, MLOCK_ONFAULT);
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

/// unlinkat, close, lseek and getdents64 (glibc 2.30), bound by their symbols for the same reason as pipe2.
extern int coffer_unlinkat(int dirfd, const char *path, int flags) __asm__("unlinkat");
extern int coffer_close(int fd) __asm__("close");
extern long coffer_lseek(int fd, long offset, int whence) __asm__("lseek");
extern long coffer_getdents64(int fd, void *buffer, unsigned long length) __asm__("getdents64");

/// Removes the file or folder tree at `path`, not following symbolic links, with async-signal-safe calls only (no
/// allocation): a signal handler calls it for a folder of decrypted files that must not outlive an interrupted command.
/// Folders deeper than 32 levels, and entries it may not remove, are left. Returns 0 when `path` is gone.
static inline int coffer_remove_tree(const char *path) {
    if (coffer_unlinkat(AT_FDCWD, path, 0) == 0 || errno == ENOENT) return 0;
    int folders[33];  // the open folders from `path` down to the one being emptied
    int stuck[33];    // per open folder: how many of its subfolders were found that this walk cannot empty
    int depth = 0;
    folders[0] = openat(AT_FDCWD, path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (folders[0] < 0) return -1;
    stuck[0] = 0;
    char entries[1024] __attribute__((aligned(8)));
    // Each pass over a folder removes what it can and goes down into the first subfolder that is not empty and not
    // known to be stuck (in the order the folder lists them, which removals do not change); back up, the parent is
    // read again from its start. Every pass removes something, goes down, or ends the folder: the walk ends. The
    // budget only bounds a folder that something else keeps filling.
    for (long budget = 1L << 20; depth >= 0 && budget > 0; budget--) {
        int descended = 0, removed = 0, remaining = 0, candidate = 0;
        coffer_lseek(folders[depth], 0, SEEK_SET);
        long length;
        while (!descended && (length = coffer_getdents64(folders[depth], entries, sizeof entries)) > 0) {
            for (long offset = 0; offset < length;) {
                // struct linux_dirent64: inode (8 bytes), offset (8), record length (2), type (1), name.
                unsigned short record = *(unsigned short *)(entries + offset + 16);
                const char *name = entries + offset + 19;
                offset += record;
                if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0))) continue;
                if (coffer_unlinkat(folders[depth], name, 0) == 0 ||
                    (errno == EISDIR && coffer_unlinkat(folders[depth], name, AT_REMOVEDIR) == 0)) {
                    removed = 1;
                    continue;
                }
                remaining = 1;
                if ((errno != ENOTEMPTY && errno != EEXIST) || depth == 32 || candidate++ < stuck[depth]) continue;
                int child = openat(folders[depth], name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (child < 0) {
                    stuck[depth]++;
                    continue;
                }
                folders[++depth] = child;
                stuck[depth] = 0;
                descended = 1;
                break;
            }
        }
        // A pass that removed something reads the folder again: removals during a read can hide entries from it.
        if (!descended && !removed) {
            coffer_close(folders[depth--]);
            if (remaining && depth >= 0) stuck[depth]++;
        }
    }
    while (depth >= 0) coffer_close(folders[depth--]);
    return coffer_unlinkat(AT_FDCWD, path, AT_REMOVEDIR);
}

#endif
