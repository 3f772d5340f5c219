import ArgumentParser
import CofferClient
import CofferCrypto
import CofferRegistry
import Foundation

extension Coffer {
    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "list",
            abstract: "List versions, newest first, optionally filtered on privacy metadata."
        )

        @OptionGroup var registry: RegistryOptions
        @Argument(help: "Only this model.") var model: String?
        @Option(
            name: .long,
            help: "Filter, e.g. 'epsilon<=3 and pruning_ratio>=0.5', \"mechanism='dp-sgd'\", \"name='icu/*'\", \"tag.stage='prod'\", 'created>=7d'."
        ) var `where`: String?
        @Option(name: .long, help: "At most N versions (0 for all).") var limit: Int = 100
        @Flag(name: .long, help: "Print JSON: an array of version objects (docs/FORMAT.md).") var json = false
        @OptionGroup var remote: RemoteOptions

        func run() async throws {
            var versions: [JSONValue]
            let client = try remote.client(over: registry)
            if let client {
                // A list is what the server reports: nothing in it was checked here (show and verify check one version).
                versions = try await client.versions(model: model, where: `where`, limit: limit > 0 ? limit : 100_000).map { row in
                    guard case .object(var fields) = row else { return row }
                    fields["verified"] = .bool(false)
                    fields["verification"] = .string("reported by the server, not checked here (coffer show or verify checks one version)")
                    return .object(fields)
                }
            } else {
                versions = try await registry.open().list(model: model, where: `where`, limit: limit > 0 ? limit : nil).map(\.json)
            }
            if limit > 0 && versions.count == limit {
                FileDescriptorStream.standardError.writeLine("(the newest \(limit) versions; --limit N shows more, --limit 0 all)")
            }
            if json { return JSONOutput.print(.array(versions)) }
            func field(_ v: JSONValue, _ key: String) -> String {
                switch v[key] {
                case .number(let n)?: String(format: "%g", n)
                case .string(let s)?: VisibleText.of(s)
                case .array(let items)?: items.compactMap(\.stringValue).map { VisibleText.of($0) }.joined(separator: ",")
                default: "-"
                }
            }
            print(
                "  MODEL:VERSION".padding(42) + "EPSILON".padding(10) + "DELTA".padding(10) + "PRUNING".padding(9) + "CREATED".padding(26) + "ALIASES"
            )
            var unverified = 0
            for v in versions {
                let mark = v["verified"] == .bool(true) ? "  " : "! "
                if mark != "  " { unverified += 1 }
                print(
                    mark + "\(field(v, "model")):\(field(v, "version"))".padding(40) + field(v, "epsilon").padding(10) + field(v, "delta").padding(10)
                        + field(v, "pruning_ratio").padding(9) + field(v, "created").padding(26) + field(v, "aliases")
                )
            }
            if unverified > 0 {
                let why = client != nil ? "as the server reports them, not checked here" : "they do not match their signed statements"
                FileDescriptorStream.standardError.writeLine("! \(unverified) row(s) \(why): coffer show NAME:VERSION says why")
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one version: metadata, privacy, lineage and files.")

        @OptionGroup var registry: RegistryOptions
        @Argument(help: "NAME, NAME:VERSION or NAME@ALIAS.") var reference: String
        @Flag(name: .long, help: "Print JSON: the version object with its files.") var json = false
        @OptionGroup var remote: RemoteOptions

        func run() async throws {
            let target = try ModelReference(parsing: reference)
            let version: JSONValue =
                if let client = try remote.client(over: registry) {
                    try await client.show(target)
                } else {
                    try await registry.open().show(target).json
                }
            if json { return JSONOutput.print(version) }
            for line in Coffer.describe(version: version) { print(line) }
        }
    }

    /// A version as `show` prints it: who and what first, then the signed privacy card, the files, the lineage, and
    /// last the identifiers; every field of the JSON appears once (a field this version of the CLI does not know is
    /// printed at the end, as it is).
    static func describe(version: JSONValue) -> [String] {
        guard case .object(var fields) = version else { return [] }
        var lines: [String] = []
        func take(_ key: String) -> JSONValue? {
            let value = fields.removeValue(forKey: key)
            return value == .null ? nil : value
        }
        func text(_ value: JSONValue) -> String {
            switch value {
            case .null: "-"
            case .string(let s): VisibleText.of(s)
            case .number(let n): String(format: "%g", n)
            case .bool(let b): String(b)
            case .array(let items): items.map(text).joined(separator: ", ")
            case .object(let members): members.keys.sorted().map { "\(VisibleText.of($0))=\(text(members[$0]!))" }.joined(separator: " ")
            }
        }
        func line(_ label: String, _ value: JSONValue?, indent: String = "") {
            guard let value, value != .array([]), value != .object([:]) else { return }
            lines.append("\(indent)\(label):".padding(24) + text(value))
        }
        func section(_ title: String, _ entries: [(String, String)]) {
            let present = entries.compactMap { label, key in take(key).map { (label, $0) } }
            guard !present.isEmpty else { return }
            lines.append("\(title):")
            for (label, value) in present { line(label, value, indent: "  ") }
        }

        let verified = take("verified") == .bool(true)
        let verification = take("verification")
        let signer = take("signer")
        if !verified {
            lines.append("UNVERIFIED: \(verification.map(text) ?? "not checked"): what follows is as stored, not as signed")
        }
        line("model", take("model"))
        line("version", take("version"))
        line("created", take("created"))
        let keyID = take("publisher_key_id").map(text) ?? "?"
        let publisher = signer.map { "\(text($0)) (key \(keyID))" } ?? "key \(keyID), not a trusted signer's"
        lines.append("publisher:".padding(24) + publisher)
        line("signature", verified ? .string("verified" + (verification.map { ": \(text($0))" } ?? "")) : nil)
        line("message", take("message"))
        line("aliases", take("aliases"))
        line("tags", take("tags"))
        if let erased = take("erased") { line("erased", erased) }

        if let segments = take("segments"), case .array(let items) = segments {
            fields["segments"] = .array(
                items.map { segment in
                    .string(
                        "q=\(text(segment["sample_rate"] ?? .null)) sigma=\(text(segment["noise_multiplier"] ?? .null)) steps=\(text(segment["steps"] ?? .null))"
                    )
                }
            )
        }
        section(
            "privacy",
            [
                ("mechanism", "mechanism"), ("unit", "privacy_unit"), ("epsilon", "epsilon"), ("delta", "delta"),
                ("claimed epsilon", "claimed_epsilon"), ("accountant", "accountant"), ("noise multiplier", "noise_multiplier"),
                ("sampling rate", "sampling_rate"), ("clipping norm", "clipping_norm"), ("steps", "steps"), ("epochs", "epochs"),
                ("dataset size", "dataset_size"), ("segments", "segments"),
            ]
        )
        section("pruning", [("method", "pruning_method"), ("target ratio", "pruning_ratio"), ("achieved sparsity", "achieved_sparsity")])
        if let evidence = take("evidence") { lines.append("evidence:".padding(24) + Coffer.describe(evidence: evidence)) }

        if case .array(let files)? = take("files") {
            lines.append("files:")
            for file in files {
                let size = file["size"]?.integerValue.map(String.init) ?? "?"
                lines.append("  \(file["path"]?.stringValue ?? "?")  \(size) bytes  sha256:\(file["sha256"]?.stringValue ?? "?")")
            }
        }
        section(
            "lineage",
            [
                ("parent", "parent"), ("dataset", "dataset_id"), ("dataset digest", "dataset_digest"),
                ("training config digest", "training_config_digest"),
            ]
        )
        line("digest", take("digest"))
        for key in fields.keys.sorted() { line(key, take(key)) }
        return lines
    }

    /// The evidence beside the proven epsilon in one line: the audit's bound, the strongest membership attack, the
    /// utility cost per task (`--json` has every number).
    static func describe(evidence: JSONValue) -> String {
        func number(_ value: JSONValue?) -> String { value?.numberValue.map { String(format: "%.4g", $0) } ?? "-" }
        var parts: [String] = []
        if let audit = evidence["audit"], audit != .null {
            parts.append(
                "audit epsilon >= \(number(audit["epsilon_lower_bound"])) at \(number(audit["confidence"])) confidence (\(number(audit["canaries"])) canaries)"
            )
        }
        if let membership = evidence["membership"], membership != .null {
            parts.append("membership attack AUC \(number(membership["max_auc"])), TPR at 1% FPR \(number(membership["max_tpr_at_1pct_fpr"]))")
        }
        if case .object(let tasks)? = evidence["utility"]?["tasks"] {
            for name in tasks.keys.sorted() {
                let task = tasks[name]!
                parts.append(
                    "\(name) \(task["metric"]?.stringValue ?? "metric") \(number(task["private"])) vs \(number(task["non_private"])) without privacy"
                )
            }
        }
        return parts.isEmpty ? "(none measured)" : parts.joined(separator: "; ")
    }

    struct Alias: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "alias",
            abstract: "Point an alias at a version, or remove it.",
            subcommands: [Set.self, Remove.self]
        )

        struct Set: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "set", abstract: "NAME@ALIAS VERSION")
            @OptionGroup var registry: RegistryOptions
            @Argument(help: "NAME@ALIAS") var alias: String
            @Argument(help: "The version to point at.") var version: String
            @OptionGroup var acting: OptionalIdentity
            @OptionGroup var remote: RemoteOptions

            func run() async throws {
                let target = try ModelReference(parsing: alias)
                guard case .alias(let name) = target.selector else { throw CLIError("give the alias as NAME@ALIAS") }
                if let client = try remote.client(over: registry) {
                    try await client.setAlias(name, of: target.name, to: version)
                } else {
                    let store = try await registry.open()
                    try await store.setAlias(name, model: target.name, version: version, by: try acting.signer(in: store))
                }
                print("\(target.name)@\(name) -> \(version)")
            }
        }

        struct Remove: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "rm", abstract: "NAME@ALIAS")
            @OptionGroup var registry: RegistryOptions
            @Argument(help: "NAME@ALIAS") var alias: String
            @OptionGroup var acting: OptionalIdentity
            @OptionGroup var remote: RemoteOptions

            func run() async throws {
                let target = try ModelReference(parsing: alias)
                guard case .alias(let name) = target.selector else { throw CLIError("give the alias as NAME@ALIAS") }
                if let client = try remote.client(over: registry) {
                    try await client.removeAlias(name, of: target.name)
                } else {
                    let store = try await registry.open()
                    try await store.removeAlias(name, model: target.name, by: try acting.signer(in: store))
                }
                print("removed \(target.name)@\(name)")
            }
        }
    }
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self + " " : self + String(repeating: " ", count: width - count) }
}

extension Coffer {
    struct Tag: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "tag", abstract: "Set or remove tags of a version (mutable labels, not signed).")

        @OptionGroup var registry: RegistryOptions
        @Argument(help: "NAME:VERSION or NAME@ALIAS.") var reference: String
        @Argument(help: "KEY=VALUE to set, KEY= to remove.") var tags: [String]

        func run() async throws {
            var changes: [String: String?] = [:]
            for pair in tags {
                guard let equals = pair.firstIndex(of: "=") else { throw CLIError("tags are KEY=VALUE (or KEY= to remove), got '\(pair)'") }
                let value = String(pair[pair.index(after: equals)...])
                changes[String(pair[..<equals])] = value.isEmpty ? nil : value
            }
            try await registry.open().tag(try ModelReference(parsing: reference), set: changes)
            print("tagged \(reference)")
        }
    }

    struct Log: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "log",
            abstract: "Show a version's lineage: parents, datasets, training configuration."
        )

        @OptionGroup var registry: RegistryOptions
        @Argument(help: "NAME, NAME:VERSION or NAME@ALIAS.") var reference: String
        @Flag(name: .long, help: "Print JSON: the chain of version objects, newest first.") var json = false

        func run() async throws {
            let chain = try await registry.open().lineage(try ModelReference(parsing: reference))
            if json { return JSONOutput.print(.array(chain.map(\.json))) }
            for version in chain {
                let epsilon = version.privacy.epsilon.map { String(format: "%g", $0) } ?? "-"
                let mark = version.verified ? "" : "  UNVERIFIED: \(version.verification ?? "")"
                print("\(version.model):\(version.version)  sha256:\(version.digest.prefix(16))  \(version.created)  epsilon \(epsilon)\(mark)")
                if let dataset = version.datasetID { print("    dataset \(dataset) \(version.datasetDigest ?? "")") }
                if let config = version.trainingConfigDigest { print("    training config \(config)") }
                if let message = version.message { print("    \(message)") }
            }
        }
    }
}
