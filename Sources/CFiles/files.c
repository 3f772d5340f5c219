#define _GNU_SOURCE 1
#include "coffer_files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// The table: each slot holds a strdup'ed path, its lowest bit set for a folder (malloc aligns to 16), or 0. A slot is
// taken and cleared by compare-and-swap, so registering and unregistering need no lock the handler could find held.
enum { SLOTS = 4096 };
static _Atomic uintptr_t slots[SLOTS];
// Set by the handler before it reads the table: from then on a path unregistered is never freed (the handler, on
// another thread, may be using it), and a second signal waits for the first handler's exit.
static atomic_int interrupted;
// Sections the handler waits for (renames that belong together), and the signal that arrived during one: the section's
// end raises it again.
static atomic_int held;
static atomic_int pending;

int coffer_temporary_register(const char *path, int is_tree) {
    char *copy = strdup(path);
    if (copy == NULL) return -1;
    uintptr_t entry = (uintptr_t)copy | (is_tree ? 1 : 0);
    for (int i = 0; i < SLOTS; i++) {
        uintptr_t empty = 0;
        if (atomic_load(&slots[i]) == 0 && atomic_compare_exchange_strong(&slots[i], &empty, entry)) {
            // A handler already running may have passed this slot: the caller must not make the file (the copy is
            // left, as the handler may be reading the slot).
            return atomic_load(&interrupted) ? -1 : 0;
        }
    }
    free(copy);
    return -1;
}

void coffer_temporary_unregister(const char *path) {
    for (int i = 0; i < SLOTS; i++) {
        uintptr_t entry = atomic_load(&slots[i]);
        if (entry == 0 || strcmp((const char *)(entry & ~(uintptr_t)1), path) != 0) continue;
        if (atomic_compare_exchange_strong(&slots[i], &entry, 0) && !atomic_load(&interrupted)) {
            free((void *)(entry & ~(uintptr_t)1));
        }
    }
}

/// Empties the folder open as `folder` (which it closes).
static void empty_folder(int folder) {
    int folders[33];  // the open folders from `folder` down to the one being emptied
    int stuck[33];    // per open folder: how many of its subfolders were found that this walk cannot empty
    int depth = 0;
    folders[0] = folder;
    stuck[0] = 0;
    char entries[1024] __attribute__((aligned(8)));
    // Each pass over a folder removes what it can and goes down into the first subfolder that is not empty and not
    // known to be stuck (in the order the folder lists them, which removals do not change); back up, the parent is
    // read again from its start. Every pass removes something, goes down, or ends the folder: the walk ends. The
    // budget only bounds a folder that something else keeps filling.
    for (long budget = 1L << 20; depth >= 0 && budget > 0; budget--) {
        int descended = 0, removed = 0, remaining = 0, candidate = 0;
        lseek(folders[depth], 0, SEEK_SET);
        ssize_t length;
        while (!descended && (length = getdents64(folders[depth], entries, sizeof entries)) > 0) {
            for (ssize_t offset = 0; offset < length;) {
                // struct linux_dirent64: inode (8 bytes), offset (8), record length (2), type (1), name.
                unsigned short record = *(unsigned short *)(entries + offset + 16);
                const char *name = entries + offset + 19;
                offset += record;
                if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0))) continue;
                if (unlinkat(folders[depth], name, 0) == 0 ||
                    (errno == EISDIR && unlinkat(folders[depth], name, AT_REMOVEDIR) == 0)) {
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
        if (!descended && length < 0) remaining = 1;  // a folder that cannot be read is stuck
        // A pass that removed something reads the folder again: removals during a read can hide entries from it.
        if (!descended && !removed) {
            close(folders[depth--]);
            if (remaining && depth >= 0) stuck[depth]++;
        }
    }
    while (depth >= 0) close(folders[depth--]);
}

int coffer_remove_tree(const char *path) {
    if (unlinkat(AT_FDCWD, path, 0) == 0 || errno == ENOENT) return 0;
    int folder = openat(AT_FDCWD, path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (folder < 0) return -1;
    empty_folder(folder);
    return unlinkat(AT_FDCWD, path, AT_REMOVEDIR);
}

void coffer_empty_folder(int folder) {
    int copy = fcntl(folder, F_DUPFD_CLOEXEC, 0);
    if (copy >= 0) empty_folder(copy);
}

/// Removes a registered folder. The signal usually arrives on another thread than the one writing into the folder (a
/// pull decrypts on a worker thread), which goes on until _exit: the folder is first renamed, so that the writer can add
/// nothing more by path (its next file, its rename of a file into place), and a rename of the whole folder into place
/// that came first leaves it alone (ENOENT here). Then it is emptied, a few times over for a file the writer finished
/// through a descriptor it already had.
static void remove_frozen(const char *path) {
    static char frozen[4096 + 16];
    size_t length = strlen(path);
    const char *target = path;
    if (length < 4096) {
        memcpy(frozen, path, length);
        memcpy(frozen + length, ".interrupted", sizeof ".interrupted");
        if (rename(path, frozen) == 0) {
            target = frozen;
        } else if (errno == ENOENT) {
            return;
        }
    }
    for (int attempt = 0; attempt < 8 && coffer_remove_tree(target) != 0; attempt++) {}
}

void coffer_interrupts_hold(void) { atomic_fetch_add(&held, 1); }

void coffer_interrupts_release(void) {
    // The handler stores its signal before it looks at `held`: either it sees this section and returns, and the signal
    // is raised here, or it goes on itself (and a second raise waits for its exit).
    if (atomic_fetch_sub(&held, 1) != 1) return;
    int signal = atomic_exchange(&pending, 0);
    if (signal != 0) raise(signal);
}

static void on_interrupt(int signal) {
    atomic_store(&pending, signal);
    if (atomic_load(&held) > 0) return;
    if (atomic_exchange(&interrupted, 1)) {
        for (;;) pause();  // another thread's handler is removing the files, and ends the process
    }
    // Folders first: once a pull's staging folder is frozen, no more of its files can be renamed into place, and the
    // files already placed (registered before their rename) go next.
    for (int i = 0; i < SLOTS; i++) {
        uintptr_t entry = atomic_load(&slots[i]);
        if (entry & 1) remove_frozen((const char *)(entry & ~(uintptr_t)1));
    }
    for (int i = 0; i < SLOTS; i++) {
        uintptr_t entry = atomic_load(&slots[i]);
        if (entry != 0 && !(entry & 1)) unlink((const char *)entry);
    }
    _exit(128 + signal);
}

void coffer_temporary_remove_on_interrupt(void) {
    // Every signal whose default action ends the process and that is sent, not raised by a fault: Ctrl-\ (SIGQUIT,
    // which the Swift runtime's backtracer otherwise took, printing a trace and hanging), kill -USR1, a write to a
    // closed pipe (progress on a stderr that went), a file size or CPU limit, an alarm. SIGKILL cannot be caught;
    // faults (SIGSEGV, traps) keep their reports.
    static const int handled[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGPIPE, SIGALRM, SIGXFSZ, SIGXCPU};
    enum { HANDLED = sizeof handled / sizeof handled[0] };
    sigset_t signals;
    sigemptyset(&signals);
    for (int i = 0; i < HANDLED; i++) sigaddset(&signals, handled[i]);
    // A parent may have spawned us with these signals blocked (some test runners do): unblock them.
    sigprocmask(SIG_UNBLOCK, &signals, NULL);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_interrupt;
    action.sa_mask = signals;  // one handler per thread at a time
    // The handler returns only during a held section; a system call it interrupted then goes on.
    action.sa_flags = SA_RESTART;
    for (int i = 0; i < HANDLED; i++) sigaction(handled[i], &action, NULL);
}

int coffer_rename_noreplace(const char *from, const char *to) {
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0) return 0;
    if (errno != EINVAL && errno != ENOSYS) return -1;
    if (faccessat(AT_FDCWD, to, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
        errno = EEXIST;
        return -1;
    }
    return rename(from, to);
}
