import CofferCrypto
import Glibc

/// Where a command writes its result: stdout for `-`, otherwise a file that appears only when the whole write succeeded.
///
/// Like `age` and `cp`, outputs are not fsynced: the input is still there to redo the work after a power loss.
enum OutputTarget {
    static func write(to path: String, mode: UInt32, _ body: (any ByteSink) throws(CofferCryptoError) -> Void) throws(CofferCryptoError) {
        if path == "-" {
            try body(FileDescriptorStream.standardOutput)
            return
        }
        if let device = try FileDescriptorStream(writingToSpecialFile: path) {
            // /dev/null, a FIFO, a terminal: nothing to rename, write straight through.
            try body(device)
            return
        }
        let file = try AtomicOutputFile(destination: path, mode: mode, durable: false)
        try body(file)
        try file.commit()
    }

    /// Refuses, before any work, an output that is a terminal (stdout for `-`, or a terminal's device): plaintext
    /// printed there stays in the scrollback, which tmux or screen may keep on disk, and a sealed file's binary
    /// garbles the terminal. `age` refuses the second for the same reason.
    ///
    /// - Parameter what: what would be printed ("the plaintext").
    static func refuseTerminal(_ path: String, for what: String) throws {
        if path == "-" {
            guard isatty(STDOUT_FILENO) == 1 else { return }
            throw CLIError("-o - would print \(what) to a terminal: pipe or redirect it, or give -o FILE")
        }
        var status = stat()
        guard stat(path, &status) == 0, status.st_mode & S_IFMT == S_IFCHR else { return }
        let descriptor = open(path, O_WRONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)
        guard descriptor >= 0 else { return }  // the write itself says why it cannot open it
        defer { close(descriptor) }
        if isatty(descriptor) == 1 { throw CLIError("\(path) is a terminal: \(what) is not printed to one; give -o FILE, or pipe -o -") }
    }
}
