import CRunner

#if canImport(Glibc)
import Glibc
#endif

// The command runner's frames (docs/FORMAT.md, "Command runner protocol"): the runner's side, and the launcher's in
// tests and the fuzz target (`coffer-run` itself is C, Sources/Run/main.c, and speaks the same frames).

/// What `coffer-run` asks the runner to run, and the descriptors that go with it.
public struct RunnerRequest: Equatable {
    public var umask: UInt32
    /// Whether a terminal descriptor follows the standard ones.
    public var terminal: Bool
    /// The launcher's process group: a prompt reads the terminal only while it is the terminal's foreground.
    public var group: UInt32
    /// The absolute path of the `coffer` the launcher would run itself.
    public var executable: [UInt8]
    /// The arguments after the program's name, as given (not necessarily UTF-8).
    public var arguments: [[UInt8]]
    /// `NAME=value` pairs.
    public var environment: [[UInt8]]

    public init(umask: UInt32, terminal: Bool, group: UInt32, executable: [UInt8], arguments: [[UInt8]], environment: [[UInt8]]) {
        self.umask = umask
        self.terminal = terminal
        self.group = group
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
    }

    /// The working directory, standard input, output and error, and the terminal when there is one.
    public var descriptorCount: Int { terminal ? 5 : 4 }

    public func encoded() -> [UInt8] {
        var body: [UInt8] = [RunnerFrame.run]
        body.appendU32(umask)
        body.append(terminal ? 1 : 0)
        body.appendU32(group)
        body.appendBlob(executable)
        body.appendU32(UInt32(arguments.count))
        for argument in arguments { body.appendBlob(argument) }
        body.appendU32(UInt32(environment.count))
        for pair in environment { body.appendBlob(pair) }
        return body
    }

    /// The request in `body`, or nil when it is not a well-formed `run` frame.
    public init?(decoding body: [UInt8]) {
        var reader = FrameReader(body)
        guard reader.u8() == RunnerFrame.run, let umask = reader.u32(), let terminal = reader.u8(), terminal <= 1, let group = reader.u32(),
            let executable = reader.blob(), let argc = reader.u32()
        else { return nil }
        var arguments: [[UInt8]] = []
        for _ in 0..<argc {
            guard let argument = reader.blob() else { return nil }
            arguments.append(argument)
        }
        guard let envc = reader.u32() else { return nil }
        var environment: [[UInt8]] = []
        for _ in 0..<envc {
            guard let pair = reader.blob(), pair.contains(UInt8(ascii: "=")), !pair.contains(0) else { return nil }
            environment.append(pair)
        }
        guard reader.atEnd, !executable.contains(0), !arguments.contains(where: { $0.contains(0) }) else { return nil }
        self.init(umask: umask, terminal: terminal == 1, group: group, executable: executable, arguments: arguments, environment: environment)
    }
}

/// The runner's answers.
public enum RunnerReply: Equatable {
    /// The command runs; its pidfd came with the frame.
    case started
    /// The command ended with this wait status.
    case exited(status: Int32)
    /// Nothing ran; the launcher runs `coffer` itself.
    case declined(Declined)
    /// A malformed request or a refused peer; nothing ran.
    case error(String)

    public enum Declined: UInt8 {
        case anotherBinary = 1
        case replaced = 2
        case threaded = 3
        /// Not now (out of descriptors, a directory or descriptor the fork cannot take); the runner serves on.
        case unavailable = 4
    }

    public func encoded() -> [UInt8] {
        switch self {
        case .started: return [0x81]
        case .exited(let status):
            var body: [UInt8] = [0x82]
            body.appendU32(UInt32(bitPattern: status))
            return body
        case .declined(let reason): return [0x83, reason.rawValue]
        case .error(let message):
            var body: [UInt8] = [0xFF]
            body.appendBlob(Array(message.utf8))
            return body
        }
    }

    public init?(decoding body: [UInt8]) {
        var reader = FrameReader(body)
        switch reader.u8() {
        case 0x81: self = .started
        case 0x82:
            guard let status = reader.u32() else { return nil }
            self = .exited(status: Int32(bitPattern: status))
        case 0x83:
            guard let raw = reader.u8(), let reason = Declined(rawValue: raw) else { return nil }
            self = .declined(reason)
        case 0xFF:
            guard let message = reader.blob() else { return nil }
            self = .error(String(decoding: message, as: UTF8.self))
        default: return nil
        }
        guard reader.atEnd else { return nil }
    }
}

/// Reading and writing frames, with descriptors on the first byte.
public enum RunnerFrame {
    public static let run: UInt8 = 0x01
    /// The launcher's answer to `started`: run the command.
    public static let go: UInt8 = 0x02
    public static let limit = Int(COFFER_FRAME_LIMIT)

    /// Writes `body` as one frame, `descriptors` attached to its first byte (``coffer_frame_write``, which the launcher
    /// uses too). False when the socket refused it.
    @discardableResult
    public static func write(_ socket: Int32, _ body: [UInt8], descriptors: [Int32] = []) -> Bool {
        body.withUnsafeBufferPointer { bytes in
            descriptors.withUnsafeBufferPointer {
                coffer_frame_write(socket, bytes.baseAddress, bytes.count, $0.baseAddress, Int32($0.count)) == 0
            }
        }
    }

    /// Reads one frame (``coffer_frame_read``); the descriptors that came with it are appended to `descriptors` (at most
    /// `capacity`). Nil at the end of the stream, on an error, or when the length is 0 or over ``limit``.
    public static func read(_ socket: Int32, descriptors: inout [Int32], capacity: Int = 0) -> [UInt8]? {
        var passed = [Int32](repeating: -1, count: max(capacity, 1))
        var received: Int32 = 0
        var length = 0
        let body = passed.withUnsafeMutableBufferPointer { coffer_frame_read(socket, &length, $0.baseAddress, Int32(capacity), &received) }
        descriptors += passed[0..<Int(received)]
        guard let body else { return nil }
        defer { free(body) }
        return Array(UnsafeBufferPointer(start: body, count: length))
    }
}

/// The bytes of a C string, without its terminating zero: arguments and environment as given, UTF-8 or not.
public func bytes(ofCString string: UnsafePointer<CChar>) -> [UInt8] {
    UnsafeRawBufferPointer(start: string, count: strlen(string)).map { $0 }
}

/// This process's arguments after its program's name, as bytes.
public var commandLineArguments: [[UInt8]] {
    (1..<Int(CommandLine.argc)).compactMap { CommandLine.unsafeArgv[$0].map { bytes(ofCString: $0) } }
}

/// A Unix socket's address, or nil when `path` does not fit in `sun_path`.
func unixAddress(_ path: [UInt8]) -> sockaddr_un? {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    guard path.count < MemoryLayout.size(ofValue: address.sun_path), !path.contains(0) else { return nil }
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path) }
    return address
}

/// A stream socket (close-on-exec, blocking) connected to the Unix socket at `path`, or nil with `errno` set.
public func connectToUnixSocket(_ path: [UInt8]) -> Int32? {
    guard var address = unixAddress(path) else {
        errno = ENAMETOOLONG
        return nil
    }
    // Non-blocking while it connects: with the listen queue full (a runner stopped or at its limit), connect fails at
    // once (EAGAIN) instead of waiting for a place.
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
    guard fd >= 0 else { return nil }
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard connected == 0, fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) == 0 else {
        let saved = errno
        close(fd)
        errno = saved
        return nil
    }
    return fd
}

/// The uid of the process at the other end of a Unix socket, and its pid.
public func peerCredentials(_ socket: Int32) -> (uid: UInt32, pid: Int32)? {
    var uid: UInt32 = 0
    var pid: Int32 = 0
    return coffer_peer_credentials(socket, &uid, &pid) == 0 ? (uid, pid) : nil
}

struct FrameReader {
    let bytes: [UInt8]
    var offset = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    var atEnd: Bool { offset == bytes.count }

    mutating func u8() -> UInt8? {
        guard offset < bytes.count else { return nil }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func u32() -> UInt32? {
        guard bytes.count - offset >= 4 else { return nil }
        defer { offset += 4 }
        return (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[offset + $1]) << (8 * $1) }
    }

    mutating func blob() -> [UInt8]? {
        guard let length = u32(), bytes.count - offset >= Int(length) else { return nil }
        defer { offset += Int(length) }
        return Array(bytes[offset..<offset + Int(length)])
    }
}

extension [UInt8] {
    mutating func appendU32(_ value: UInt32) {
        for shift in stride(from: 0, to: 32, by: 8) { append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }

    mutating func appendBlob(_ blob: [UInt8]) {
        appendU32(UInt32(blob.count))
        self += blob
    }
}
