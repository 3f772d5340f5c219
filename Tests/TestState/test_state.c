// Every test process keeps its client state (the registries it remembers, its pins, the records of its temporary
// files) in a folder of its own, made before anything else runs and removed when it exits, whatever COFFER_STATE_DIR
// said (a developer's own, or the one tools/test exports for the programs it runs): run as plain `swift test`, the
// in-process tests of remote clients remembered their registries in the user's ~/.local/state, where every coffer
// command the user ran afterwards read them.
#define _XOPEN_SOURCE 700
#include "coffer_test_state.h"
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char folder[PATH_MAX];
static pid_t maker;

static int remove_entry(const char *path, const struct stat *info, int kind, struct FTW *walk) {
    (void)info, (void)kind, (void)walk;
    remove(path);
    return 0;
}

// Depth first, links not followed: only what is inside the folder this process made goes, and only when this process
// (not a fork of it that exits) ends.
static void remove_folder(void) {
    if (getpid() == maker) nftw(folder, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

__attribute__((constructor)) static void coffer_test_state(void) {
    const char *temporary = getenv("TMPDIR");
    char made[PATH_MAX];
    int length = snprintf(made, sizeof made, "%s/coffer-test-state-XXXXXX", temporary && *temporary ? temporary : "/tmp");
    // Absolute, so that removing it at exit does not depend on the working directory then.
    if (length <= 0 || (size_t)length >= sizeof made || !mkdtemp(made) || !realpath(made, folder) ||
        setenv("COFFER_STATE_DIR", folder, 1) != 0) {
        fprintf(stderr, "coffer tests: cannot make a client state folder of their own under %s\n", temporary && *temporary ? temporary : "/tmp");
        abort();
    }
    maker = getpid();
    atexit(remove_folder);
}

const char *coffer_test_state_folder(void) { return folder; }
