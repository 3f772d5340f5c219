import ArgumentParser
import CofferClient
import CofferCrypto
import CofferRegistry
import Foundation

/// `--registry URL --token cft_...` (or `COFFER_REGISTRY`, `COFFER_TOKEN`): a registry served by `coffer serve`.
struct RemoteOptions: ParsableArguments {
    @Option(name: .long, help: "A registry served by coffer serve (default: $COFFER_REGISTRY); otherwise --home is used.")
    var registry: String?
    @Option(name: .long, help: "Bearer token for --registry (default: $COFFER_TOKEN).") var token: String?
    @Option(name: .long, help: "PEM certificates to trust for an https --registry instead of the system's (default: $COFFER_CA_CERT).")
    var caCert: String?

    var url: URL? {
        (registry ?? ProcessInfo.processInfo.environment["COFFER_REGISTRY"]).flatMap { $0.isEmpty ? nil : URL(string: $0) }
    }
    var caCertificate: String? { caCert ?? ProcessInfo.processInfo.environment["COFFER_CA_CERT"] }

    /// A client when `--registry` (or `COFFER_REGISTRY`) names a server; `nil` for the local registry. What the client
    /// has to say beyond its answers (a pin made on first use, a push resumed) goes to stderr.
    func client() throws -> CofferClient? {
        guard let url else { return nil }
        guard let bearer = token ?? ProcessInfo.processInfo.environment["COFFER_TOKEN"] else {
            throw CLIError("--registry needs a bearer token: --token or COFFER_TOKEN")
        }
        return try CofferClient(baseURL: url, token: Secret(text: bearer), caCertificate: caCertificate) { line in
            FileDescriptorStream.standardError.writeLine("coffer: \(line)")
        }
    }
}
