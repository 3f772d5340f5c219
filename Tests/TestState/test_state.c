// Every test process keeps its client state (the registries it remembers, its pins, the records of its temporary
// files) in a folder of its own, made before anything else runs and removed when it exits, unless COFFER_STATE_DIR
// names one already (tools/test exports one for its whole run). Run as plain `swift test`, the in-process tests of
// remote clients remembered their registries in the user's ~/.local/state, where every coffer command the user ran
// afterwards read them.
#define _XOPEN_SOURCE 700
#include "coffer_test_state.h"
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>

static char folder[4096];

static int remove_entry(const char *path, const struct stat *info, int kind, struct FTW *walk) {
    (void)info, (void)kind, (void)walk;
    remove(path);
    return 0;
}

// Depth first, links not followed: only what is inside the folder this process made goes.
static void remove_folder(void) { nftw(folder, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

__attribute__((constructor)) static void coffer_test_state(void) {
    const char *given = getenv("COFFER_STATE_DIR");
    if (given && *given) return;
    const char *temporary = getenv("TMPDIR");
    snprintf(folder, sizeof folder, "%s/coffer-test-state-XXXXXX", temporary && *temporary ? temporary : "/tmp");
    if (!mkdtemp(folder) || setenv("COFFER_STATE_DIR", folder, 1) != 0) {
        folder[0] = 0;
        return;
    }
    atexit(remove_folder);
}

const char *coffer_test_state_folder(void) { return folder[0] ? folder : NULL; }
