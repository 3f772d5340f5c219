import CRunner
import CofferRunner

#if canImport(Glibc)
import Glibc
#endif

// `coffer-run ARGS...` runs `coffer ARGS...` in the runner named by COFFER_RUNNER_SOCK (docs/FORMAT.md, "Command
// runner protocol"), or, when there is none or it declines, runs the `coffer` beside this file itself. It imports no
// Foundation: what it costs comes before every command it runs.

func say(_ line: String) {
    let bytes = Array("coffer: \(line)\n".utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

/// The `coffer` beside this program.
let coffer: [UInt8] = {
    var link = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let length = readlink("/proc/self/exe", &link, link.count - 1)
    guard length > 0 else { return Array("coffer".utf8) }
    let path = link[0..<length].map { UInt8(bitPattern: $0) }
    return Array(path[...(path.lastIndex(of: UInt8(ascii: "/")) ?? 0)]) + Array("coffer".utf8)
}()

/// Runs `coffer` itself in this process's place.
func runDirectly() -> Never {
    let path = coffer.map { CChar(bitPattern: $0) } + [0]
    var argv: [UnsafeMutablePointer<CChar>?] = [strdup(path)] + (1..<Int(CommandLine.argc)).map { CommandLine.unsafeArgv[$0] } + [nil]
    execv(path, &argv)
    say("cannot run \(String(decoding: coffer, as: UTF8.self)): \(String(cString: strerror(errno)))")
    exit(127)
}

func connectToRunner() -> Int32? {
    guard let named = getenv("COFFER_RUNNER_SOCK"), named.pointee != 0 else { return nil }
    let path = bytes(ofCString: named)
    guard let fd = connectToUnixSocket(path) else { return nil }
    // The runner would get this program's descriptors, environment and directory: never one of another user, nor
    // another program of this user's that listens where the variable points (a stale path made again as a link).
    guard let peer = peerCredentials(fd), peer.uid == geteuid() else {
        say("the runner at \(String(decoding: path, as: UTF8.self)) is not this user's; unset COFFER_RUNNER_SOCK")
        exit(1)
    }
    var listening = stat()
    var mine = stat()
    guard stat("/proc/\(peer.pid)/exe", &listening) == 0, stat(coffer.map { CChar(bitPattern: $0) } + [0], &mine) == 0,
        listening.st_dev == mine.st_dev, listening.st_ino == mine.st_ino
    else { return nil }
    // A runner that takes no more than 5 s to read the request, or none (a request as large as the environment).
    var deadline = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &deadline, socklen_t(MemoryLayout<timeval>.size))
    return fd
}

/// Whether an argument or a COFFER_ variable names a descriptor past the standard three (`<(...)` gives
/// `/dev/fd/63`): a fork of the runner is passed the standard three only. (Checking for every inherited descriptor
/// instead would leave the runner unused wherever a terminal or an IDE leaks one.)
func namesAnotherDescriptor(_ environment: [[UInt8]]) -> Bool {
    let named = commandLineArguments + environment.filter { $0.starts(with: Array("COFFER_".utf8)) }
    return named.contains { value in
        let text = String(decoding: value, as: UTF8.self)
        for prefix in ["/dev/fd/", "/proc/self/fd/", "/proc/thread-self/fd/"] {
            for found in text.ranges(of: prefix) where Int(text[found.upperBound...].prefix(while: \.isNumber)).map({ $0 > 2 }) == true {
                return true
            }
        }
        return false
    }
}

// What the runner cannot reproduce, coffer itself does: a closed standard descriptor (the socket would take its
// number and become the command's stdio), a descriptor past the standard three named on the command line, and a
// launcher in the background of the terminal on its stdio (coffer would be stopped by job control before reading or
// writing it; a fork of the runner has no controlling terminal to stop it).
for fd in Int32(0)...2 where fcntl(fd, F_GETFD) < 0 || (isatty(fd) == 1 && tcgetpgrp(fd) != getpgrp()) {
    runDirectly()
}
guard let runner = connectToRunner() else { runDirectly() }

var environment: [[UInt8]] = []
var entry = environ
while let pair = entry.pointee {
    environment.append(bytes(ofCString: pair))
    entry += 1
}
if namesAnotherDescriptor(environment) { runDirectly() }
let mask = umask(0o077)
umask(mask)
// The terminal for prompts, only while this launcher is in its foreground: a prompt must not take a line typed at the
// shell for a job it started in the background.
let terminal: Int32 = {
    let fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY)
    guard fd >= 0, tcgetpgrp(fd) == getpgrp() else {
        if fd >= 0 { close(fd) }
        return -1
    }
    return fd
}()
let directory = coffer_open_working_directory()
guard directory >= 0 else { runDirectly() }
let request = RunnerRequest(
    umask: UInt32(mask),
    terminal: terminal >= 0,
    group: UInt32(bitPattern: getpgrp()),
    executable: coffer,
    arguments: commandLineArguments,
    environment: environment
)
guard RunnerFrame.write(runner, request.encoded(), descriptors: [directory, 0, 1, 2] + (terminal >= 0 ? [terminal] : [])) else { runDirectly() }
close(directory)
if terminal >= 0 { close(terminal) }

// A runner that does not answer within 5 s (stopped, swapping) is left: the fork runs nothing without `go`.
var answering = pollfd(fd: runner, events: Int16(POLLIN), revents: 0)
var waited: Int32
repeat { waited = poll(&answering, 1, 5000) } while waited < 0 && errno == EINTR
guard waited > 0 else { runDirectly() }
var passed: [Int32] = []
guard let first = RunnerFrame.read(runner, descriptors: &passed, capacity: 1).flatMap(RunnerReply.init(decoding:)) else { runDirectly() }
switch first {
case .started where passed.count == 1: break
case .error(let message):
    say("runner: \(message)")
    exit(1)
default: runDirectly()  // declined, or an answer this launcher does not know: nothing ran, nor will without `go`
}
coffer_forward_signals(passed[0])
guard RunnerFrame.write(runner, [RunnerFrame.go]) else { runDirectly() }

var ignored: [Int32] = []
guard case .exited(let status)? = RunnerFrame.read(runner, descriptors: &ignored).flatMap(RunnerReply.init(decoding:)) else {
    // The runner went away while the command ran: wait for the command, whose status is lost with it.
    var end = pollfd(fd: passed[0], events: Int16(POLLIN), revents: 0)
    while poll(&end, 1, -1) < 0 && errno == EINTR {}
    say("the runner stopped while the command ran; its exit status is lost")
    exit(1)
}
if status & 0x7f == 0 { exit((status >> 8) & 0xff) }
// Ended by a signal: end this process the same way, so that a shell sees what it would have seen (without a core of
// the launcher's own: the command's, if any, is the command's).
let signalNumber = status & 0x7f
var noCore = rlimit(rlim_cur: 0, rlim_max: 0)
setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &noCore)
signal(signalNumber, SIG_DFL)
var unblocked = sigset_t()
sigemptyset(&unblocked)
sigaddset(&unblocked, signalNumber)
sigprocmask(SIG_UNBLOCK, &unblocked, nil)
raise(signalNumber)
exit(128 + signalNumber)
