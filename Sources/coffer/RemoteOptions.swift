import ArgumentParser
import CofferClient
import CofferCrypto
import CofferRegistry
import Foundation

/// `--registry URL --token cft_...` (or `COFFER_REGISTRY` and `COFFER_TOKEN`, or the config file's `registry` and
/// `token_file`): a registry served by `coffer serve`.
///
/// A token goes only to the registry it was given with: `--token` to any; `COFFER_TOKEN` to `--registry` or
/// `COFFER_REGISTRY`; the config file's token to the config file's registry. `COFFER_REGISTRY` applies only without
/// `--home`, the file's registry only when no registry directory was named (`--home`, `COFFER_HOME`): a command
/// pointed at a local registry stays local. And a
/// token never crosses the network in plain http (loopback aside).
struct RemoteOptions: ParsableArguments {
    @Option(
        name: .long,
        help:
            "A registry served by coffer serve (default unless --home is given: $COFFER_REGISTRY, else registry in the config file); otherwise --home is used."
    )
    var registry: String?
    @Option(name: .long, help: "Bearer token for --registry (default: $COFFER_TOKEN; for the config file's registry, its token_file).")
    var token: String?
    @Option(name: .long, help: "PEM certificates to trust for an https --registry instead of the system's (default: $COFFER_CA_CERT).")
    var caCert: String?

    /// Where the registry's address came from, which decides where its token may come from.
    private enum Source { case flagOrEnvironment, configFile }

    private func address(over local: RegistryOptions) throws -> (URL, Source)? {
        let environment = ProcessInfo.processInfo.environment
        let (text, source): (String, Source)
        if let given = registry, !given.isEmpty {
            (text, source) = (given, .flagOrEnvironment)
        } else if local.home == nil, let given = environment["COFFER_REGISTRY"], !given.isEmpty {
            // A --home typed on this command line is meant more than a variable set for the shell.
            (text, source) = (given, .flagOrEnvironment)
        } else if local.home == nil, environment["COFFER_HOME"]?.isEmpty ?? true, let configured = UserConfig.value(.registry) {
            (text, source) = (configured, .configFile)
        } else {
            return nil
        }
        // The client says which URLs it takes (http and https); an unparsable one is not silently the local registry.
        guard let url = URL(string: text) else { throw CLIError("registry '\(text)' is not a URL") }
        return (url, source)
    }

    var caCertificate: String? { caCert ?? UserConfig.value(.caCert) }

    /// The token for a registry whose address came from `source`.
    private func bearer(for source: Source) throws -> String? {
        if let token { return token }
        switch source {
        case .flagOrEnvironment:
            return ProcessInfo.processInfo.environment["COFFER_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
        case .configFile:
            guard let file = UserConfig.value(.tokenFile) else { return nil }
            UserConfig.warnIfOthersCanRead(file, what: "token file")
            guard let data = FileManager.default.contents(atPath: file),
                let line = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).first, !line.isEmpty
            else {
                throw CLIError("cannot read a token from \(file) (token_file in \(UserConfig.path))")
            }
            return String(line)
        }
    }

    /// A client when a served registry is named (see the type's rules); `nil` for the local registry `local`. What the
    /// client has to say beyond its answers (a pin made on first use, a push resumed) goes to stderr.
    func client(over local: RegistryOptions) throws -> CofferClient? {
        guard let (url, source) = try address(over: local) else { return nil }
        guard let bearer = try bearer(for: source) else {
            throw CLIError(
                source == .configFile
                    ? "the config file's registry needs its token: token_file in \(UserConfig.path), or --token"
                    : "--registry needs a bearer token: --token or COFFER_TOKEN"
            )
        }
        return try CofferClient(baseURL: url, token: Secret(text: bearer), caCertificate: caCertificate) { line in
            FileDescriptorStream.standardError.writeLine("coffer: \(line)")
        }
    }
}
