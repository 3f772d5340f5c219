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

    func open() async throws(CofferRegistryError) -> Registry { try await Registry(at: resolvedHome) }
}

/// `--json` output: sorted keys, one document, newline-terminated.
enum JSONOutput {
    static func print(_ value: JSONValue) { print(encodable: value) }

    static func print(encodable value: some Encodable) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        Swift.print(String(decoding: (try? encoder.encode(value)) ?? Data("null".utf8), as: UTF8.self))
    }
}

extension JSONValue {
    init(_ text: String?) { self = text.map { .string($0) } ?? .null }
}
