import ArgumentParser
import CofferCrypto
import CofferServer

/// How a server command listens: `--tls-cert`/`--tls-key` for HTTPS, `--insecure` to allow plain HTTP beyond
/// loopback, and the limits on slow clients and on connections (``ClientLimits``). `coffer serve` and `coffer fl
/// serve` take these the same way and refuse the same things, so that what crosses the network (tokens, or the global
/// model and the federation's messages) is never sent in the clear by accident.
struct ListenOptions: ParsableArguments {
    @Flag(name: .long, help: "Allow plain HTTP on an address other than loopback.") var insecure = false
    @Option(name: .long, help: "TLS certificate chain (PEM): serve HTTPS.") var tlsCert: String?
    @Option(name: .long, help: "TLS private key (PEM), with --tls-cert.") var tlsKey: String?
    @Option(name: .long, help: "Connections served at once; past it new ones wait until one closes.") var maxConnections: Int = 512
    @Option(name: .long, help: "Seconds a client has to send a request head, and how far it may fall behind --client-min-rate.")
    var clientTimeout: Double = 10
    @Option(name: .long, help: "Bytes per second a client must send its request body at, and take its answer at, while the server waits on it.")
    var clientMinRate: Int = 1024
    @Option(
        name: .long,
        help:
            "IP address of a reverse proxy in front of this server (repeat for more): its answers are not held to --client-min-rate, and it must time its own clients."
    )
    var trustedProxy: [String] = []

    /// Where and how to listen.
    struct Address {
        var host: String
        var port: Int
        /// PEM files of the certificate chain and key; `nil` for plain HTTP.
        var tls: (certificate: String, privateKey: String)?
        var clientLimits: ClientLimits

        /// `https://HOST:PORT` (or `http`), with an IPv6 host in brackets; `port` is the one bound, which the system
        /// chose when `--listen` said 0.
        func url(port: Int) -> String { "\(tls == nil ? "http" : "https")://\(host.contains(":") ? "[\(host)]" : host):\(port)" }
    }

    /// Checks `listen` (see ``parseListen(_:)``) against the TLS options.
    ///
    /// - Parameter exposed: what plain HTTP would show the network, for the refusal ("tokens").
    /// - Throws: a one-line error for a malformed address, a certificate without its key (or the reverse), plain
    ///   HTTP beyond loopback without `--insecure`, or client limits that are not positive.
    func address(_ listen: String, exposing exposed: String) throws -> Address {
        var (host, port) = try Self.parseListen(listen)
        guard maxConnections >= 1, clientMinRate >= 1, clientTimeout > 0, clientTimeout <= 86_400 else {
            throw CLIError("--max-connections and --client-min-rate must be at least 1, --client-timeout over 0 and at most 86400 seconds")
        }
        if (tlsCert == nil) != (tlsKey == nil) { throw CLIError("--tls-cert and --tls-key go together") }
        let tls = tlsCert.flatMap { cert in tlsKey.map { (certificate: cert, privateKey: $0) } }
        guard isLoopback(host: host) || insecure || tls != nil else {
            throw CLIError(
                "plain HTTP on \(host) would expose \(exposed) on the network: listen on 127.0.0.1, give --tls-cert and --tls-key, or pass --insecure"
            )
        }
        // Plain HTTP proves nothing of who answers, and `localhost` names ::1 as well as 127.0.0.1: the server bound
        // one of them, and clients that try the other first could reach another local process holding the same port
        // there (the bearer token with it). Bound and printed as the address it is (helper-48).
        if tls == nil && host == "localhost" { host = "127.0.0.1" }
        for address in trustedProxy where ClientLimits.peerAddress(address) == nil {
            throw CLIError("--trusted-proxy takes an IP address, got '\(address)'")
        }
        let limits = ClientLimits(
            timeout: .nanoseconds(Int64(clientTimeout * 1e9)),
            minimumRate: clientMinRate,
            maximumConnections: maxConnections,
            trustedProxies: Set(trustedProxy)
        )
        return Address(host: host, port: port, tls: tls, clientLimits: limits)
    }

    /// `HOST:PORT`, or `[IPV6]:PORT`; port 0 lets the system choose a free one (the server prints it).
    static func parseListen(_ text: String) throws -> (host: String, port: Int) {
        var host: Substring
        var rest: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw CLIError("--listen takes HOST:PORT or [IPV6]:PORT, got '\(text)'") }
            host = text[text.index(after: text.startIndex)..<close]
            rest = text[text.index(after: close)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw CLIError("--listen takes HOST:PORT or [IPV6]:PORT, got '\(text)'") }
            host = text[..<colon]
            rest = text[colon...]
        }
        guard rest.hasPrefix(":"), let port = Int(rest.dropFirst()), (0...65535).contains(port), !host.isEmpty, !host.contains(" ") else {
            throw CLIError("--listen takes HOST:PORT or [IPV6]:PORT, got '\(text)'")
        }
        if host.contains(":"), !text.hasPrefix("[") { throw CLIError("--listen: write an IPv6 address in brackets, [\(host)]:\(port)") }
        return (String(host), port)
    }
}
