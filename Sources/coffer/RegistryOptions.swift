import ArgumentParser
import CofferCrypto
import CofferRegistry
import Foundation

/// `--home DIR` (or `COFFER_HOME`, or `home` in the config file, default `~/.coffer`): the registry directory.
struct RegistryOptions: ParsableArguments {
    @Option(name: .long, help: "Registry directory (default: $COFFER_HOME, else home in the config file, else ~/.coffer).")
    var home: String?

    var resolvedHome: String {
        home ?? UserConfig.value(.home) ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".coffer").path
    }

    /// The registry, on one SQLite connection (a command does one thing at a time), or a pool of them for a server.
    func open(serving: Bool = false) async throws(CofferRegistryError) -> Registry {
        try await Registry(at: resolvedHome, sqlite: serving ? .pool : .one)
    }
}

/// `--json` output: sorted keys, one document, newline-terminated. The encoder escapes C0 controls inside strings but
/// leaves DEL, C1 and bidirectional controls raw: ``VisibleText/of(_:lines:)`` escapes those as `\u` escapes, which
/// are valid JSON for the same string, and keeps the document's own line breaks.
enum JSONOutput {
    static func print(_ value: JSONValue) { print(encodable: value) }

    static func print(encodable value: some Encodable) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        Swift.print(VisibleText.of(String(decoding: (try? encoder.encode(value)) ?? Data("null".utf8), as: UTF8.self), lines: true))
    }
}

extension JSONValue {
    init(_ text: String?) { self = text.map { .string($0) } ?? .null }
}
