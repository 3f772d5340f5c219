import CSodium

#if canImport(Glibc)
import Glibc
#endif

/// Where a passphrase comes from, read straight into secure memory (never a `String`).
public enum Passphrase {
    /// Longest passphrase accepted, in bytes.
    static let maximumLength = 4096

    /// The value of `COFFER_PASSPHRASE`, or `nil` when it is not set.
    ///
    /// The environment block itself cannot be wiped; the copy made here can.
    public static func fromEnvironment(_ name: String = "COFFER_PASSPHRASE") throws(CofferCryptoError) -> SecureBytes? {
        guard let value = getenv(name) else { return nil }
        let length = strlen(value)
        guard length > 0 else { throw .emptyPassphrase }
        guard length <= maximumLength else { throw .passphraseTooLong(maximumLength) }
        return SecureBytes(copying: UnsafeRawBufferPointer(start: value, count: length))
    }

    /// The contents of `path`, without one trailing newline.
    public static func fromFile(_ path: String) throws(CofferCryptoError) -> SecureBytes {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        let buffer = SecureBytes(count: maximumLength + 1)
        let length = buffer.withUnsafeMutableBytes { out -> Int in
            var total = 0
            while total < out.count {
                let n = read(fd, out.baseAddress! + total, out.count - total)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                total += n
            }
            return total
        }
        guard length <= maximumLength else { throw .passphraseTooLong(maximumLength) }
        return try trimmed(buffer, length: length)
    }

    /// Prompts on the controlling terminal with echo off; `nil` when there is no terminal.
    ///
    /// - Parameter confirm: ask twice and require both entries to match (for new keys).
    public static func prompt(_ message: String, confirm: Bool = false) throws(CofferCryptoError) -> SecureBytes? {
        guard isatty(STDIN_FILENO) == 1 else { return nil }
        let fd = Terminal.open()
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        let first = try readHidden(fd: fd, prompt: message)
        if confirm {
            let second = try readHidden(fd: fd, prompt: "Repeat passphrase: ")
            guard first.constantTimeEquals(second) else { throw .io(path: "/dev/tty", reason: "the two passphrases differ") }
        }
        return first
    }

    private static func readHidden(fd: Int32, prompt: String) throws(CofferCryptoError) -> SecureBytes {
        // Echo off (and type-ahead discarded) before the prompt is shown: an answer typed after the prompt
        // appears is never flushed away.
        var saved = termios()
        tcgetattr(fd, &saved)
        var silent = saved
        silent.c_lflag &= ~tcflag_t(ECHO)
        tcsetattr(fd, TCSAFLUSH, &silent)
        defer {
            tcsetattr(fd, TCSANOW, &saved)
            _ = write(fd, "\n", 1)
        }
        _ = prompt.withCString { write(fd, $0, strlen($0)) }
        let buffer = SecureBytes(count: maximumLength)
        let length = buffer.withUnsafeMutableBytes { out -> Int in
            var total = 0
            var byte: UInt8 = 0
            while total < out.count, Terminal.readByte(fd, into: &byte), byte != 0x0a {
                out[total] = byte
                total += 1
            }
            byte = 0
            return total
        }
        return try trimmed(buffer, length: length)
    }

    /// Why `passphrase` is too weak to protect a key file, or `nil` when it meets the floor: at least 12 bytes, at least
    /// 6 different bytes, and at least 48 bits by the character-pool estimate (length times log2 of the pool: 10 for
    /// digits, 26 for each letter case, 33 for anything else). A floor against `password1` and `123456789012`, not a
    /// meter: Argon2id makes each guess cost 32 MiB and about 0.1-0.4 s, and a 48-bit floor leaves an offline attacker
    /// some 10^13 guesses to make.
    ///
    /// Read in place: which bytes occur is kept in a bitmap on the stack, never copied out.
    public static func weakness(_ passphrase: borrowing SecureBytes) -> String? {
        passphrase.withUnsafeBytes { bytes -> String? in
            var seen: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
            var lower = false
            var upper = false
            var digit = false
            var other = false
            for byte in bytes {
                let bit = UInt64(1) << UInt64(byte & 63)
                switch byte >> 6 {
                case 0: seen.0 |= bit
                case 1: seen.1 |= bit
                case 2: seen.2 |= bit
                default: seen.3 |= bit
                }
                switch byte {
                case 0x61...0x7a: lower = true
                case 0x41...0x5a: upper = true
                case 0x30...0x39: digit = true
                default: other = true
                }
            }
            let distinct = seen.0.nonzeroBitCount + seen.1.nonzeroBitCount + seen.2.nonzeroBitCount + seen.3.nonzeroBitCount
            seen = (0, 0, 0, 0)
            let pool = (lower ? 26 : 0) + (upper ? 26 : 0) + (digit ? 10 : 0) + (other ? 33 : 0)
            let bits = Double(bytes.count) * log2(Double(max(pool, 1)))
            if bytes.count < 12 { return "shorter than 12 characters" }
            if distinct < 6 { return "fewer than 6 different characters" }
            if bits < 48 { return "about \(Int(bits)) bits by its length and character classes, under 48" }
            return nil
        }
    }

    /// The first `length` bytes of `buffer` without a trailing "\n" or "\r\n"; refuses an empty result.
    private static func trimmed(_ buffer: borrowing SecureBytes, length: Int) throws(CofferCryptoError) -> SecureBytes {
        var end = length
        buffer.withUnsafeBytes { bytes in
            if end > 0, bytes[end - 1] == 0x0a { end -= 1 }
            if end > 0, bytes[end - 1] == 0x0d { end -= 1 }
        }
        guard end > 0 else { throw .emptyPassphrase }
        return buffer.slice(0..<end)
    }
}
