/// Addresses that never leave the machine: 127.0.0.0/8 written as four decimal parts, `::1` (also in full and in a
/// URL's brackets) and the name `localhost` (RFC 6761). Plain connections are allowed to these alone, by `coffer serve`,
/// `fl serve`, `fl join` and the PostgreSQL client's default `sslmode`.
///
/// Any other form is not loopback: a name that only starts like one (`127.example.com`) or a shorthand (`127.1`) is
/// resolved by DNS anywhere.
public func isLoopback(host: String) -> Bool {
    let host = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
    if host == "localhost" || host == "::1" || host == "0:0:0:0:0:0:0:1" { return true }
    // Each part as inet_pton reads it: one to three digits, no sign, no leading zero. Anything else (`127.0.0.08`,
    // `127.+0.0.1`) getaddrinfo does not read as an address: it asks DNS.
    let parts = host.split(separator: ".", omittingEmptySubsequences: false)
    return parts.count == 4 && parts[0] == "127"
        && parts.allSatisfy { part in
            (1...3).contains(part.count) && part.allSatisfy { $0.isASCII && $0.isNumber } && (part == "0" || part.first != "0")
                && Int(part)! <= 255
        }
}
