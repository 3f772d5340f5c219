#ifndef COFFER_FILES_H
#define COFFER_FILES_H
// File operations Swift cannot make safe on its own: what a signal handler removes when a command is interrupted
// (only async-signal-safe calls, on a table of C strings), and a rename that never replaces what is at its target.

/// Registers a file (`is_tree` 0) or a folder with everything in it (`is_tree` 1) to remove if the process is
/// interrupted, until ``coffer_temporary_unregister``. Returns 0, or -1 when the table (4,096 paths) is full.
int coffer_temporary_register(const char *path, int is_tree);

/// Forgets every registration of `path`.
void coffer_temporary_unregister(const char *path);

/// Unblocks SIGINT, SIGTERM, SIGHUP and the other signals sent to end a process, and installs the handler that removes
/// what is registered, then exits with 128 + the signal.
void coffer_temporary_remove_on_interrupt(void);

/// Holds interrupts off until the matching ``coffer_interrupts_release``: a signal the handler takes meanwhile takes
/// effect then (for renames that must all happen or none). Sections may nest and run on several threads; keep them
/// short.
void coffer_interrupts_hold(void);

/// Ends a section begun by ``coffer_interrupts_hold``; the last to end raises a signal that arrived during them.
void coffer_interrupts_release(void);

/// Removes the file or folder tree at `path`, not following symbolic links, with async-signal-safe calls only (no
/// allocation). Folders deeper than 32 levels, and entries it may not remove, are left. Returns 0 when `path` is gone.
int coffer_remove_tree(const char *path);

/// Removes everything inside the folder open as `folder` (not the folder), as ``coffer_remove_tree`` does: through the
/// descriptor, so that a rename of the folder or of a folder above it changes nothing of what is removed.
void coffer_empty_folder(int folder);

/// Renames `from` to `to` unless something is at `to` (then -1 with errno EEXIST): renameat2 with RENAME_NOREPLACE,
/// or, on a filesystem without it, a check then a rename.
int coffer_rename_noreplace(const char *from, const char *to);

#endif
