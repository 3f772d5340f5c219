import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A client speaking raw bytes over TCP, to do what no HTTP library would: trickle a body, stall, hold a connection
/// idle. Its calls block: run them with ``offPool(_:)``, never on the pool the server's handlers share.
public final class RawConnection: @unchecked Sendable {
    private let fd: Int32

    /// - Parameter receiveBuffer: a small socket buffer makes a slow reader (the server's sends wait on it).
    public init(port: Int, receiveBuffer: Int32? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        if var size = receiveBuffer { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            Glibc.close(fd)
            throw CocoaError(.fileReadUnknown, userInfo: [NSLocalizedDescriptionKey: "cannot connect to 127.0.0.1:\(port)"])
        }
    }

    /// A connection `RawListener` accepted: this side plays the server.
    init(descriptor: Int32) { fd = descriptor }

    deinit { Glibc.close(fd) }

    /// Sends every byte; false once the server has closed the connection (no SIGPIPE).
    @discardableResult
    public func send(_ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return false }
            sent += n
        }
        return true
    }

    @discardableResult
    public func send(_ text: String) -> Bool { send(Array(text.utf8)) }

    /// What arrives within `timeout` seconds, up to the server closing the connection: nil if nothing came and the
    /// connection is still open, "" if it was closed without an answer.
    public func receive(timeout: Double) -> String? {
        var wait = timeval(tv_sec: Int(timeout), tv_usec: Int(timeout.truncatingRemainder(dividingBy: 1) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buffer, buffer.count, 0)
        if n > 0 { return String(decoding: buffer[..<n], as: UTF8.self) }
        return n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK) ? "" : nil
    }

    /// Everything that arrives until the server closes the connection (or `timeout` seconds pass without a byte).
    public func receiveAll(timeout: Double) -> String {
        var text = ""
        while let part = receive(timeout: timeout), !part.isEmpty { text += part }
        return text
    }

    /// One blocking read into `buffer`: the byte count, 0 once the server closed the connection, -1 on an error.
    public func receive(into buffer: inout [UInt8]) -> Int { recv(fd, &buffer, buffer.count, 0) }

    /// Ends the connection from this side (the descriptor is closed at deinit).
    public func hangUp() { shutdown(fd, Int32(SHUT_RDWR)) }

    /// True once the server has closed the connection (or answered), without waiting.
    public var isClosedOrAnswered: Bool {
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, Int32(MSG_DONTWAIT | MSG_PEEK))
        return n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)
    }
}

extension RawConnection {
    /// Sends a request head announcing `length` bytes, then `chunk` bytes every `interval` seconds until the body is
    /// sent, the server closes the connection, or `budget` seconds pass. Returns whether it was cut, after how long,
    /// how many body bytes went, and what came back.
    public static func trickle(
        port: Int,
        head: String,
        length: Int,
        chunk: Int,
        interval: Double,
        budget: Double
    ) async throws
        -> (cut: Bool, seconds: Double, sent: Int, answer: String)
    {
        let connection = try RawConnection(port: port)
        return await offPool {
            let started = ContinuousClock.now
            let elapsed = { (ContinuousClock.now - started) / .seconds(1) }
            connection.send(head.replacingOccurrences(of: "LENGTH", with: "\(length)"))
            var sent = 0
            while sent < length, elapsed() < budget {
                if connection.isClosedOrAnswered { break }
                let n = min(chunk, length - sent)
                guard connection.send([UInt8](repeating: 0x61, count: n)) else { break }
                sent += n
                if sent < length { usleep(UInt32(interval * 1e6)) }
            }
            let answer = connection.receive(timeout: 10) ?? "(no answer)"
            return (answer.isEmpty, elapsed(), sent, answer)
        }
    }
}

/// Runs blocking socket calls on a thread of their own, never on the pool the server's handlers share.
public func offPool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in Thread { continuation.resume(returning: body()) }.start() }
}

/// A socket listening on 127.0.0.1 at a port the system picks, to play a server byte by byte: answer a request, or
/// close a kept-alive connection as the next request arrives. Its calls block, as ``RawConnection``'s do.
public final class RawListener: @unchecked Sendable {
    private let fd: Int32
    public let port: Int

    public init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let listening = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 && listen(fd, 8) == 0
            }
        }
        guard listening else {
            Glibc.close(fd)
            throw CocoaError(.fileReadUnknown, userInfo: [NSLocalizedDescriptionKey: "cannot listen on 127.0.0.1"])
        }
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    deinit { Glibc.close(fd) }

    /// The next connection, or nil when none comes within `timeout` seconds.
    public func accept(timeout: Double) -> RawConnection? {
        var ready = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&ready, 1, Int32(timeout * 1000)) == 1 else { return nil }
        let accepted = Glibc.accept(fd, nil, nil)
        return accepted < 0 ? nil : RawConnection(descriptor: accepted)
    }
}

extension RawConnection {
    /// A request's head (a request without a body), up to its blank line; nil when none comes within `timeout` seconds
    /// or the client closed the connection first.
    public func receiveHead(timeout: Double) -> String? {
        var text = ""
        while !text.contains("\r\n\r\n") {
            guard let part = receive(timeout: timeout), !part.isEmpty else { return nil }
            text += part
        }
        return text
    }
}
