import ArgumentParser
import CofferCrypto
import CofferRegistry
import CofferRunner
import Foundation

#if canImport(Glibc)
import Glibc
#endif

extension Coffer {
    struct RunnerGroup: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "runner",
            abstract: "Keep a warm coffer process that runs commands given to coffer-run, skipping start-up (docs/FORMAT.md).",
            subcommands: [Start.self, Stop.self]
        )
    }
}

extension Coffer.RunnerGroup {
    struct Start: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "start",
            abstract: "Start a runner and print the shell lines that point coffer-run at it: eval \"$(coffer runner start)\"."
        )

        func run() async throws {
            let path = try AgentLauncher.makeSocketPath(service: "runner")
            let pid: Int32
            do {
                pid = try AgentLauncher.startDetached(
                    executable: Coffer.AgentCommand.Start.executable,
                    arguments: [],
                    // Nothing of this shell's: a fork takes its launcher's environment, and the runner would only
                    // keep tokens and passwords (COFFER_TOKEN, PGPASSWORD) in its memory for its whole life.
                    environment: [RunnerProcess.variable: path],
                    inheritingEnvironment: false,
                    service: "runner"
                )
            } catch {
                AgentLauncher.removeDirectory(of: path)
                if case .agent(let why) = error { throw CLIError("runner: \(why)") }
                throw error
            }
            let quoted = "'" + path.replacingOccurrences(of: "'", with: "'\\''") + "'"
            FileDescriptorStream.standardOutput.writeLine("COFFER_RUNNER_SOCK=\(quoted); export COFFER_RUNNER_SOCK;")
            FileDescriptorStream.standardOutput.writeLine("COFFER_RUNNER_PID=\(pid); export COFFER_RUNNER_PID;")
        }
    }

    struct Stop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "stop",
            abstract: "Stop the runner named by COFFER_RUNNER_SOCK once the commands it runs have ended."
        )

        func run() async throws {
            guard let path = ProcessInfo.processInfo.environment["COFFER_RUNNER_SOCK"], !path.isEmpty else {
                throw CLIError("COFFER_RUNNER_SOCK is not set: no runner to stop")
            }
            // The pid comes from the socket's own peer credentials, not from an environment variable that may be stale.
            guard let fd = connectToUnixSocket(Array(path.utf8)) else {
                throw CLIError("runner: no runner at \(path): \(String(cString: strerror(errno)))")
            }
            defer { close(fd) }
            guard let peer = peerCredentials(fd), peer.uid == geteuid() else { throw CLIError("runner: the runner at \(path) is not this user's") }
            guard kill(peer.pid, SIGTERM) == 0 else { throw CLIError("runner: cannot stop process \(peer.pid): \(String(cString: strerror(errno)))") }
            FileDescriptorStream.standardOutput.writeLine("unset COFFER_RUNNER_SOCK COFFER_RUNNER_PID;")
        }
    }
}

/// The runner's own process: started by `coffer runner start` with ``variable`` naming its socket.
enum RunnerProcess {
    static let variable = "COFFER_RUNNER_SERVE"

    /// Serves when this process was started as a runner, returning in each fork the command it is to run; nil otherwise.
    /// It runs before anything else in `main`, while the process has one thread: no task has started yet.
    static func serveIfAsked() -> RunnerCommand? {
        guard let named = getenv(variable) else { return nil }
        let socketPath = String(cString: named)
        unsetenv(variable)
        // Descriptor 3 is `start`'s ready pipe; without one this was not started by `start`.
        var info = stat()
        guard fstat(3, &info) == 0, info.st_mode & S_IFMT == S_IFIFO else {
            FileDescriptorStream.standardError.writeLine("coffer: \(variable) is for coffer runner start only")
            exit(1)
        }
        AgentLauncher.detach()
        let server: RunnerServer
        do { server = try RunnerServer(socketPath: socketPath) } catch {
            AgentLauncher.reportReady(3, failure: "runner: \(error.description)")
            exit(1)
        }
        warmUp()
        AgentLauncher.reportReady(3)
        let command = server.serve()
        RandomSource.afterFork()
        Terminal.passed = command.terminal
        return command
    }

    /// Parses the everyday commands once and starts a made-up ledger (``Registry/warmUpForForks()``), so that forks find
    /// ArgumentParser's and the runtime's first lookups done. Nothing here may read the environment, the registry or a
    /// key into memory the forks share.
    private static func warmUp() {
        let lines = [
            ["push", "m", "f", "--identity", "k.key"], ["pull", "m:1", "--identity", "k.key", "--out", "d"], ["list"], ["show", "m:1"],
            ["verify", "m:1"], ["infer", "--session", "s", "i"],
        ]
        // And the cast `main` makes of each: the runtime's conformance cache had no entry for a command's type as an
        // AsyncParsableCommand, so every fork scanned all ~12,900 conformance records twice for it.
        for line in lines {
            if let command = try? Coffer.parseAsRoot(line) { _ = command as? any AsyncParsableCommand }
        }
        Registry.warmUpForForks()
    }
}
