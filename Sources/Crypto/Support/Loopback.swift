/// Addresses that never leave the machine: 127.0.0.0/8 written as a dotted quad, `::1` (also in full and in a URL's
/// brackets) and the name `localhost` (RFC 6761). Plain connections are allowed to these alone, by `coffer serve`,
/// `fl serve`, `fl join` and the PostgreSQL client's default `sslmode`.
///
/// A name that only starts like one (`127.example.com`, resolved by DNS anywhere) is not loopback.
public func isLoopback(host: String) -> Bool {
    let host = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
    if host == "localhost" || host == "::1" || host == "0:0:0:0:0:0:0:1" { return true }
    let parts = host.split(separator: ".", omittingEmptySubsequences: false)
    return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
}
