/// The one byte range of an HTTP `Range` header Coffer answers (RFC 9110 14.1.2): `bytes=a-b`, `bytes=a-` or
/// `bytes=-n`, within a representation of `size` bytes. A last position past the end means the end; several ranges,
/// other units and anything but ASCII digits are refused.
public enum ByteRange {
    /// The range to send, or nil when the header is not one satisfiable range. No arithmetic can overflow, whatever the
    /// numbers: `bytes=0-9223372036854775807` once trapped the server (issue 15, finding 3).
    public static func parse(_ text: String, size: Int) -> Range<Int>? {
        guard text.hasPrefix("bytes="), !text.contains(","), size > 0 else { return nil }
        let spec = text.dropFirst(6).split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard spec.count == 2, spec.allSatisfy({ $0.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 } }) else { return nil }
        let (first, last) = (Int(spec[0]), Int(spec[1]))
        switch (first, last) {
        case (let a?, let b?) where a <= b && a < size: return a..<(b >= size - 1 ? size : b + 1)
        case (let a?, nil) where spec[1].isEmpty && a < size: return a..<size
        case (nil, let n?) where spec[0].isEmpty && n > 0: return (n >= size ? 0 : size - n)..<size
        default: return nil
        }
    }
}
