import ArgumentParser
import CofferCrypto
import CofferRegistry
import Foundation

/// `coffer export` and `coffer import`: a version as an OCI artifact in another registry, for mirrors and air-gapped
/// sites (docs/FORMAT.md, "Keys for named recipients" and "Importing").
struct Export: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Copy a version into an OCI repository (ciphertext and signed documents), with its key wrapped for named recipients."
    )

    @OptionGroup var registry: RegistryOptions
    @Argument(help: "NAME, NAME:VERSION or NAME@ALIAS.") var reference: String
    @Option(name: .long, help: "The OCI repository: oci://HOST[:PORT]/REPO (oci+http:// for plain HTTP on loopback).")
    var to: String
    @Option(name: .long, help: "A public identity (NAME.pub) to wrap the data key for; repeat for several. Without one, the copy opens for nobody.")
    var recipient: [String] = []
    @Option(
        name: .long,
        help: "Your private identity (NAME.key): a reader holding a key of the version (default: $COFFER_IDENTITY, else identity in the config file)."
    ) var identity: String?
    @OptionGroup var passphraseOptions: PassphraseOptions

    func run() async throws {
        let target = try ModelReference(parsing: reference)
        let recipients = try recipient.map { path throws(CofferCryptoError) in try PublicIdentity(contentsOf: path) }
        let store = try await registry.open()
        let exporter = try passphraseOptions.unlockIdentity(at: try UserConfig.requiredIdentity(identity))
        let result = try await store.exportVersion(
            target,
            to: to,
            recipients: recipients,
            identity: exporter,
            environment: ProcessInfo.processInfo.environment
        )
        let keys = result.recipients.isEmpty ? "no key (it opens for nobody)" : "keys for \(result.recipients.joined(separator: ", "))"
        print(
            "exported \(result.model):\(result.version) sha256:\(result.digest) to \(to):\(result.tag) (manifest sha256:\(result.manifestDigest), \(result.blobsSent) blobs sent, \(keys))"
        )
    }
}

struct Import: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Verify and adopt a version copied into an OCI repository: signature by a trusted signer, every blob hashed and opened."
    )

    @OptionGroup var registry: RegistryOptions
    @Argument(help: "oci://HOST[:PORT]/REPO:TAG or oci://HOST[:PORT]/REPO@sha256:HEX (oci+http:// for plain HTTP).") var source: String
    @Option(
        name: .long,
        help:
            "Your private identity (NAME.key): a publisher of the model holding a stanza of the copy (default: $COFFER_IDENTITY, else identity in the config file, else the registry's own key)."
    )
    var identity: String?
    @OptionGroup var passphraseOptions: PassphraseOptions

    func run() async throws {
        let store = try await registry.open()
        let importer = try passphraseOptions.unlockIdentity(at: UserConfig.identity(identity) ?? "\(store.home)/registry.key")
        let result = try await store.importVersion(from: source, identity: importer, environment: ProcessInfo.processInfo.environment)
        print("imported \(result.model):\(result.version) sha256:\(result.digest) (\(result.files) files) from \(source)")
    }
}
