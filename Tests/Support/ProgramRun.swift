import CofferCrypto
public import Foundation

/// A program run to its end: its exit status, standard output and standard error.
public struct ProgramOutput: Sendable {
    public var status: Int32
    public var stdout: Data
    public var stderr: String
    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }

    public init(status: Int32, stdout: Data, stderr: String) {
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
    }
}

/// The one way the test suites run a program to its end (coffer, PostgreSQL's scripts, htpasswd).
///
/// ``Spawn``, with output and error in files, not Foundation's Process and pipes: under the test runner, with many
/// tests spawning at once, a Process's output pipe once never reached its end after the child had exited (the test
/// waited forever on a zombie), and a server a script starts outlives the script and would hold a pipe a reader waits
/// on. `stdin` goes through a pipe (commands treat a pipe and a file differently) whose ends are close-on-exec, so no
/// other child spawned meanwhile holds it open.
public enum ProgramRun {
    /// Runs `program arguments` with `environment` (the whole of it; `nil` passes this process's own).
    ///
    /// - Parameter mergingStandardError: standard error into the same file as standard output (then `stderr` is empty).
    /// - Throws: only when the program cannot be started, naming it.
    public static func run(
        _ program: String,
        _ arguments: [String],
        environment: [String: String]? = nil,
        stdin: Data? = nil,
        mergingStandardError: Bool = false
    ) throws -> ProgramOutput {
        // A child that exits before reading all its stdin must not kill the test process.
        _ = ignoringSIGPIPE
        let files = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-run-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: files, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: files) }
        let (output, error) = (files.appendingPathComponent("out").path, files.appendingPathComponent("err").path)
        var input: [Int32] = [-1, -1]
        if stdin != nil {
            // pipe2(O_CLOEXEC) is not visible to Swift: close-on-exec right after, leaving the shortest of windows.
            guard pipe(&input) == 0 else { throw CocoaError(.fileWriteUnknown) }
            for end in input { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        }
        let pid: pid_t
        do {
            pid = try Spawn.start(
                program,
                arguments,
                environment: environment,
                stdin: stdin == nil ? .null : .descriptor(input[0]),
                stdout: .file(output),
                stderr: mergingStandardError ? .output : .file(error)
            )
        } catch let failure {
            for end in input where end >= 0 { close(end) }
            throw CocoaError(.fileReadUnknown, userInfo: [NSLocalizedDescriptionKey: "cannot start \(program): \(failure.description)"])
        }
        if let stdin {
            close(input[0])
            let writing = input[1]
            // A child that stops reading early gets EPIPE here (SIGPIPE is ignored), not a stuck test.
            Thread {
                stdin.withUnsafeBytes { bytes in
                    var done = 0
                    while done < bytes.count {
                        let n = write(writing, bytes.baseAddress! + done, bytes.count - done)
                        if n < 0, errno == EINTR { continue }
                        if n <= 0 { break }
                        done += n
                    }
                }
                close(writing)
            }.start()
        }
        let status = Spawn.wait(pid)
        return ProgramOutput(
            status: status,
            stdout: (try? Data(contentsOf: URL(fileURLWithPath: output))) ?? Data(),
            stderr: String(decoding: (try? Data(contentsOf: URL(fileURLWithPath: error))) ?? Data(), as: UTF8.self)
        )
    }

    private static let ignoringSIGPIPE: Void = { signal(SIGPIPE, SIG_IGN) }()
}
