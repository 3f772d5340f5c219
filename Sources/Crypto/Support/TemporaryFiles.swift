import CFiles

/// Temporary files, and folders of them, to remove if the process is interrupted (SIGINT, SIGTERM, SIGHUP, SIGQUIT, and
/// the other signals sent to end a process: see `coffer_temporary_remove_on_interrupt`) before they are committed or
/// taken into place. SIGKILL and a crash leave them.
///
/// The table and the signal handler are C (``coffer_temporary_register``, CFiles): the handler makes only
/// async-signal-safe calls on C strings, and registering takes no lock it could find held. It holds 4,096 paths.
public enum TemporaryFiles {
    /// Removes the file at `path` if the process is interrupted, until ``unregister(_:)``; false when the table is full
    /// or an interrupt is already being handled (the caller must then not make the file).
    @discardableResult
    public static func register(_ path: String) -> Bool { coffer_temporary_register(path, 0) == 0 }

    /// Removes the folder at `path`, and everything in it, if the process is interrupted, until ``unregister(_:)``;
    /// false when the table is full. The handler renames the folder before it empties it, so that a thread still
    /// writing into it by path cannot add to it.
    @discardableResult
    public static func registerTree(_ path: String) -> Bool { coffer_temporary_register(path, 1) == 0 }

    public static func unregister(_ path: String) { coffer_temporary_unregister(path) }

    /// Runs `body` with interrupts held off: a signal that arrives meanwhile takes effect once it returns. For renames
    /// that must all happen or none; keep it short (no waiting on anything that an interrupt should end).
    @discardableResult
    public static func holdingInterrupts<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        coffer_interrupts_hold()
        defer { coffer_interrupts_release() }
        return try body()
    }

    /// Installs the handler that removes registered temporary files when the process is told to stop.
    public static func removeOnInterrupt() { coffer_temporary_remove_on_interrupt() }
}
