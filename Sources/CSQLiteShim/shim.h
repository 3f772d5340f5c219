#ifndef COFFER_CSQLITESHIM_H
#define COFFER_CSQLITESHIM_H
// SQLite settings Swift cannot reach: sqlite3_db_config is variadic.
#include <sqlite3.h>

/// Leaves the write-ahead log as it is when this connection closes (SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, SQLite 3.16):
/// without it, the last connection to close copies the log into the database and deletes it (two more fsyncs), and the
/// next process to open makes a new log (two more). Returns SQLITE_OK or an error code.
static inline int coffer_sqlite_keep_log_on_close(sqlite3 *db) {
    return sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, (int *)0);
}
#endif
