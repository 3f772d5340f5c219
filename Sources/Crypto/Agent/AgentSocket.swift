import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// The Unix-socket calls both ends of the agent protocol make: connect, listen, and whole frames in and out.
enum AgentSocket {
    /// The largest frame body either side accepts (docs/FORMAT.md).
    static let maximumBody = 4 << 20

    /// What went wrong moving a frame (the only error these functions throw).
    enum FrameError: Error {
        /// The peer closed the connection (or it broke) before a whole frame was through.
        case closed(String)
        /// A length of 0 or over ``maximumBody``.
        case size(Int)
    }

    /// A `sockaddr_un` for `path`, or `nil` when the path does not fit.
    static func address(_ path: String) -> sockaddr_un? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let raw = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !raw.isEmpty, raw.count < capacity else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { out in
            for (i, byte) in raw.enumerated() { out[i] = byte }
        }
        return address
    }

    /// Connects to the agent listening at `path`, if it runs as this process's uid.
    ///
    /// A client sends secrets over the socket (`add`'s keys, `lock`'s passphrase), so it checks the listener's uid as
    /// the agent checks its clients': a stale `COFFER_AGENT_SOCK` (an agent stopped, its directory under /tmp then made
    /// again by another user) must not hand them to a stranger.
    static func connect(_ path: String) throws(CofferCryptoError) -> Int32 {
        guard var address = address(path) else { throw .agent("socket path \(path) is too long") }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .agent("cannot create a socket: \(String(cString: strerror(errno)))") }
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard status == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw .agent("no agent at \(path) (\(reason))")
        }
        let me = geteuid()
        let listener = peerUID(fd)
        guard listener == me else {
            close(fd)
            let who = listener.map { "uid \($0)" } ?? "an unknown uid"
            throw .agent("refused the agent at \(path): it runs as \(who), not as uid \(me) (was your agent stopped? unset COFFER_AGENT_SOCK)")
        }
        return fd
    }

    /// Binds and listens at `path` with mode 0600: the umask is narrowed around `bind`, so the socket never
    /// exists with a wider mode, even for an instant. (No `chmod` after: it would follow a link put in the socket's place.)
    static func listen(_ path: String) throws(CofferCryptoError) -> Int32 {
        guard var address = address(path) else { throw .agent("socket path \(path) is too long") }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .agent("cannot create a socket: \(String(cString: strerror(errno)))") }
        let saved = umask(0o177)
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        umask(saved)
        guard status == 0, Glibc.listen(fd, 16) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw .agent("cannot listen at \(path): \(reason)")
        }
        return fd
    }

    /// The uid of the process at the other end of a connected socket (SO_PEERCRED), or `nil`.
    static func peerUID(_ fd: Int32) -> uid_t? {
        // struct ucred is pid, uid, gid: three 32-bit fields (Swift's Glibc leaves the GNU-only struct out).
        var credentials = [Int32](repeating: 0, count: 3)
        var length = socklen_t(MemoryLayout<Int32>.size * 3)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0, length == socklen_t(MemoryLayout<Int32>.size * 3) else {
            return nil
        }
        return uid_t(bitPattern: credentials[1])
    }

    /// Writes all of `bytes`.
    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            // MSG_NOSIGNAL: a peer that went away is an error here, not a SIGPIPE that kills the process.
            let n = Glibc.send(fd, bytes.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw FrameError.closed(n < 0 ? String(cString: strerror(errno)) : "connection closed") }
            done += n
        }
    }

    /// Reads exactly `out.count` bytes; `false` on a clean end of stream before the first byte.
    static func readAll(_ fd: Int32, _ out: UnsafeMutableRawBufferPointer) throws -> Bool {
        var done = 0
        while done < out.count {
            let n = recv(fd, out.baseAddress! + done, out.count - done, 0)
            if n < 0 && errno == EINTR { continue }
            if n == 0 && done == 0 { return false }
            guard n > 0 else { throw FrameError.closed(n < 0 ? String(cString: strerror(errno)) : "connection closed mid-message") }
            done += n
        }
        return true
    }

    /// Sends a frame built by ``AgentFrameWriter``.
    static func send(_ fd: Int32, frame: borrowing SecureBytes) throws {
        try frame.withUnsafeBytes { (bytes: UnsafeRawBufferPointer) throws in try writeAll(fd, bytes) }
    }

    /// Reads one frame's body into sodium memory; `nil` when the peer closed the connection between frames.
    static func receive(_ fd: Int32) throws -> SecureBytes? {
        var header = [UInt8](repeating: 0, count: 4)
        let started = try header.withUnsafeMutableBytes { try readAll(fd, $0) }
        guard started else { return nil }
        let length = Int(header[0]) | Int(header[1]) << 8 | Int(header[2]) << 16 | Int(header[3]) << 24
        guard (1...maximumBody).contains(length) else { throw FrameError.size(length) }
        let body = SecureBytes(isolatedCount: length)
        let complete = try body.withUnsafeMutableBytes { (out: UnsafeMutableRawBufferPointer) throws in try readAll(fd, out) }
        guard complete else { throw FrameError.closed("connection closed mid-message") }
        return body
    }
}
