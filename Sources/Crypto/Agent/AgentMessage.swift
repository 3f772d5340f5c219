/// The messages of the agent socket protocol (docs/FORMAT.md, "Agent socket protocol").
///
/// Frames are read into ``SecureBytes`` on both sides, because two requests (`add`, `lock`/`unlock`) and one
/// answer (`data key`) carry secrets. Their parsed forms therefore name secret fields by their range in the frame,
/// never as arrays: the reader copies them from the frame straight into sodium memory.
///
/// ```swift
/// let request = try AgentRequest(parsing: body)   // body: the frame's bytes after the length
/// ```
public enum AgentRequest: Equatable, Sendable {
    case list
    /// `secrets` is the range of the 96 secret bytes within the frame body.
    case add(name: String, secrets: Range<Int>, ttl: UInt64)
    case remove(keyID: [UInt8])
    case removeAll
    case signEd25519(keyID: [UInt8], message: [UInt8])
    case signP256(keyID: [UInt8], message: [UInt8])
    case unwrap(keyID: [UInt8], stanza: [UInt8])
    /// `passphrase` is the range of the passphrase within the frame body.
    case lock(passphrase: Range<Int>)
    case unlock(passphrase: Range<Int>)
    case stop

    static let listType: UInt8 = 0x01
    static let addType: UInt8 = 0x02
    static let removeType: UInt8 = 0x03
    static let removeAllType: UInt8 = 0x04
    static let signEd25519Type: UInt8 = 0x05
    static let signP256Type: UInt8 = 0x06
    static let unwrapType: UInt8 = 0x07
    static let lockType: UInt8 = 0x08
    static let unlockType: UInt8 = 0x09
    static let stopType: UInt8 = 0x0A

    /// Parses one request body (the frame without its length).
    ///
    /// - Throws: ``AgentFailure`` with code `.malformed` for anything but exactly one well-formed request.
    public init(parsing body: UnsafeRawBufferPointer) throws(AgentFailure) {
        var reader = AgentFieldReader(body)
        let type = try reader.u8()
        switch type {
        case Self.listType: self = .list
        case Self.addType:
            let name = try reader.string()
            do { try PublicIdentity.validate(name: name) } catch { throw AgentFailure(.malformed, "invalid identity name") }
            let secrets = try reader.range(96)
            self = .add(name: name, secrets: secrets, ttl: try reader.u64())
        case Self.removeType: self = .remove(keyID: try reader.bytes(16))
        case Self.removeAllType: self = .removeAll
        case Self.signEd25519Type: self = .signEd25519(keyID: try reader.bytes(16), message: try reader.blob())
        case Self.signP256Type: self = .signP256(keyID: try reader.bytes(16), message: try reader.blob())
        case Self.unwrapType: self = .unwrap(keyID: try reader.bytes(16), stanza: try reader.blob())
        case Self.lockType: self = .lock(passphrase: try reader.passphrase())
        case Self.unlockType: self = .unlock(passphrase: try reader.passphrase())
        case Self.stopType: self = .stop
        default: throw AgentFailure(.malformed, "unknown request type \(type)")
        }
        try reader.end()
    }
}

/// An agent's answer, as a client reads it.
public enum AgentResponse: Equatable, Sendable {
    case ok
    case identities([AgentListing])
    case signature([UInt8])
    /// `key` is the range of the 32-byte data key within the frame body.
    case dataKey(key: Range<Int>)
    case failure(AgentFailure)

    static let okType: UInt8 = 0x80
    static let identitiesType: UInt8 = 0x81
    static let signatureType: UInt8 = 0x82
    static let dataKeyType: UInt8 = 0x83
    static let errorType: UInt8 = 0xFF

    /// Parses one answer body.
    ///
    /// - Throws: ``AgentFailure`` with code `.malformed` for anything but exactly one well-formed answer.
    public init(parsing body: UnsafeRawBufferPointer) throws(AgentFailure) {
        var reader = AgentFieldReader(body)
        let type = try reader.u8()
        switch type {
        case Self.okType: self = .ok
        case Self.identitiesType:
            let count = Int(try reader.u16())
            var listed: [AgentListing] = []
            for _ in 0..<count {
                let name = try reader.string()
                let ed25519 = try reader.bytes(32)
                let x25519 = try reader.bytes(32)
                let p256 = try reader.bytes(65)
                let expires = try reader.u64()
                do {
                    let identity = try PublicIdentity(name: name, ed25519: ed25519, x25519: x25519, p256: p256)
                    listed.append(AgentListing(identity: identity, expires: expires))
                } catch {
                    throw AgentFailure(.malformed, "the agent listed an invalid identity")
                }
            }
            self = .identities(listed)
        case Self.signatureType: self = .signature(try reader.blob())
        case Self.dataKeyType: self = .dataKey(key: try reader.range(SecretKey.byteCount))
        case Self.errorType:
            let code = try reader.u8()
            let message = try reader.string()
            self = .failure(AgentFailure(AgentFailure.Code(rawValue: code) ?? .unknown, message, rawCode: code))
        default: throw AgentFailure(.malformed, "unknown answer type \(type)")
        }
        try reader.end()
    }
}

/// One identity an agent holds: its public keys and when it expires (Unix seconds, 0 for never).
public struct AgentListing: Equatable, Sendable {
    public let identity: PublicIdentity
    public let expires: UInt64
}

/// An `error` answer of the agent protocol, or a local failure to speak it.
public struct AgentFailure: Error, Equatable, Sendable, CustomStringConvertible {
    /// The protocol's error codes (docs/FORMAT.md).
    public enum Code: UInt8, Sendable {
        case malformed = 1
        case unknownIdentity = 2
        case locked = 3
        case wrongPassphrase = 4
        case notARecipient = 5
        case unwrapFailed = 6
        case refusedPeer = 7
        case invalidKey = 8
        case frameSize = 9
        case busy = 10
        case noRoom = 11
        /// A code this version does not know (the raw value is kept in `rawCode`).
        case unknown = 255
    }

    public let code: Code
    public let rawCode: UInt8
    public let message: String

    public init(_ code: Code, _ message: String, rawCode: UInt8? = nil) {
        self.code = code
        self.rawCode = rawCode ?? code.rawValue
        self.message = message
    }

    /// Whether the agent closes the connection after answering with this code.
    var closesConnection: Bool { [.malformed, .refusedPeer, .frameSize, .busy].contains(code) }

    public var description: String { message }
}

// MARK: - Field reading

/// Reads the protocol's little-endian fields from a frame body, every read bounds-checked.
struct AgentFieldReader {
    private let body: UnsafeRawBufferPointer
    private var offset = 0

    init(_ body: UnsafeRawBufferPointer) { self.body = body }

    mutating func range(_ count: Int) throws(AgentFailure) -> Range<Int> {
        guard count >= 0, body.count - offset >= count else { throw AgentFailure(.malformed, "the message is truncated") }
        defer { offset += count }
        return offset..<offset + count
    }

    mutating func bytes(_ count: Int) throws(AgentFailure) -> [UInt8] {
        let span = try range(count)
        return Array(body[span])
    }

    mutating func u8() throws(AgentFailure) -> UInt8 {
        let span = try range(1)
        return body[span.lowerBound]
    }

    mutating func u16() throws(AgentFailure) -> UInt16 { UInt16(try little(2)) }
    mutating func u32() throws(AgentFailure) -> UInt32 { UInt32(try little(4)) }
    mutating func u64() throws(AgentFailure) -> UInt64 { try little(8) }

    mutating func string() throws(AgentFailure) -> String {
        let raw = try bytes(Int(try u16()))
        guard let text = String(validating: raw, as: UTF8.self) else { throw AgentFailure(.malformed, "a string is not UTF-8") }
        return text
    }

    mutating func blob() throws(AgentFailure) -> [UInt8] { try bytes(Int(try u32())) }

    mutating func passphrase() throws(AgentFailure) -> Range<Int> {
        let length = Int(try u32())
        guard (1...Passphrase.maximumLength).contains(length) else {
            throw AgentFailure(.malformed, "a passphrase must be 1 to \(Passphrase.maximumLength) bytes")
        }
        return try range(length)
    }

    func end() throws(AgentFailure) {
        guard offset == body.count else { throw AgentFailure(.malformed, "the message has trailing bytes") }
    }

    private mutating func little(_ width: Int) throws(AgentFailure) -> UInt64 {
        let span = try range(width)
        let body = self.body
        return span.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64(body[$1]) }
    }
}

// MARK: - Field writing

/// Builds a frame (length and body) directly in sodium memory, so secret fields are never in an array.
struct AgentFrameWriter: ~Copyable {
    let frame: SecureBytes
    private var offset = 0

    /// A frame for a body of exactly `bodyLength` bytes.
    init(bodyLength: Int) {
        frame = SecureBytes(count: 4 + bodyLength)
        put(UInt64(bodyLength), width: 4)
    }

    mutating func u8(_ value: UInt8) { put(UInt64(value), width: 1) }
    mutating func u16(_ value: UInt16) { put(UInt64(value), width: 2) }
    mutating func u32(_ value: UInt32) { put(UInt64(value), width: 4) }
    mutating func u64(_ value: UInt64) { put(value, width: 8) }

    mutating func bytes(_ source: UnsafeRawBufferPointer) {
        let at = offset
        frame.withUnsafeMutableBytes { out in
            if let base = source.baseAddress, source.count > 0 { (out.baseAddress! + at).copyMemory(from: base, byteCount: source.count) }
        }
        offset += source.count
    }

    mutating func bytes(_ source: [UInt8]) {
        let at = offset
        frame.withUnsafeMutableBytes { out in
            source.withUnsafeBytes {
                if let base = $0.baseAddress, $0.count > 0 { (out.baseAddress! + at).copyMemory(from: base, byteCount: $0.count) }
            }
        }
        offset += source.count
    }

    /// Copies a secret from sodium memory to sodium memory.
    mutating func bytes(secure source: borrowing SecureBytes) {
        let at = offset
        frame.withUnsafeMutableBytes { out in
            source.withUnsafeBytes {
                if let base = $0.baseAddress, $0.count > 0 { (out.baseAddress! + at).copyMemory(from: base, byteCount: $0.count) }
            }
        }
        offset += source.count
    }
    mutating func string(_ text: String) {
        let raw = Array(text.utf8)
        u16(UInt16(raw.count))
        bytes(raw)
    }
    mutating func blob(_ source: [UInt8]) {
        u32(UInt32(source.count))
        bytes(source)
    }

    /// The finished frame; every byte of the announced body must have been written.
    consuming func finish() -> SecureBytes {
        precondition(offset == frame.count, "agent frame length mismatch")
        return frame
    }

    private mutating func put(_ value: UInt64, width: Int) {
        let at = offset
        frame.withUnsafeMutableBytes { out in
            for i in 0..<width { out[at + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
        }
        offset += width
    }
}

/// Sizes of the variable fields, for ``AgentFrameWriter/init(bodyLength:)``.
enum AgentFieldSize {
    static func string(_ text: String) -> Int { 2 + text.utf8.count }
    static func blob(_ bytes: [UInt8]) -> Int { 4 + bytes.count }
    static let listing = 32 + 32 + 65 + 8
}
