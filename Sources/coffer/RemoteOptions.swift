import ArgumentParser
import CofferClient
import CofferCrypto
import CofferRegistry
import Foundation

/// `--registry URL --token cft_...` (or `COFFER_REGISTRY`, `COFFER_TOKEN`, or the config file's `registry` and
/// `token_file`): a registry served by `coffer serve`.
struct RemoteOptions: ParsableArguments {
    @Option(
        name: .long,
        help: "A registry served by coffer serve (default: $COFFER_REGISTRY, else registry in the config file); otherwise --home is used."
    )
    var registry: String?
    @Option(name: .long, help: "Bearer token for --registry (default: $COFFER_TOKEN, else the file token_file in the config file names).")
    var token: String?
    @Option(name: .long, help: "PEM certificates to trust for an https --registry instead of the system's (default: $COFFER_CA_CERT).")
    var caCert: String?

    var url: URL? {
        (registry ?? UserConfig.value(.registry)).flatMap { $0.isEmpty ? nil : URL(string: $0) }
    }
    var caCertificate: String? { caCert ?? UserConfig.value(.caCert) }

    /// `--token`, else `COFFER_TOKEN`, else the first line of the token file the user's settings name.
    private func bearer() throws -> String? {
        if let given = token ?? ProcessInfo.processInfo.environment["COFFER_TOKEN"] { return given }
        guard let file = UserConfig.value(.tokenFile) else { return nil }
        guard let data = FileManager.default.contents(atPath: file),
            let line = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).first, !line.isEmpty
        else {
            throw CLIError("cannot read a token from \(file) (token_file)")
        }
        return String(line)
    }

    /// A client when `--registry` (or `COFFER_REGISTRY`) names a server; `nil` for the local registry. What the client
    /// has to say beyond its answers (a pin made on first use, a push resumed) goes to stderr.
    func client() throws -> CofferClient? {
        guard let url else { return nil }
        guard let bearer = try bearer() else {
            throw CLIError("--registry needs a bearer token: --token, COFFER_TOKEN, or token_file in \(UserConfig.path)")
        }
        return try CofferClient(baseURL: url, token: Secret(text: bearer), caCertificate: caCertificate) { line in
            FileDescriptorStream.standardError.writeLine("coffer: \(line)")
        }
    }
}
