import CofferCrypto
import Foundation
import Testing

@testable import CofferRegistry

/// `coffer export` and `coffer import` between two registries through OCI repositories (docker-registry 2.8, and
/// skopeo copying between two of them, as a mirror or an air-gapped transfer would).
@Suite struct OCITransferTests {
    struct World {
        let source: RegistryFixture
        let target: RegistryFixture
        let alice: UnlockedIdentity
        let bob: UnlockedIdentity
        let instance: OCITestRegistry.Instance
        let repository: String
        var url: String { instance.url(repository) }
    }

    /// Registry A holding alice's m:1; registry B trusting alice; an empty repository between them.
    func world() async throws -> World {
        let source = try await RegistryFixture()
        let target = try await RegistryFixture()
        let alice = try person("alice")
        let bob = try person("bob")
        try await source.registry.trust(alice.publicIdentity, by: try source.registrySigner)
        try await target.registry.trust(alice.publicIdentity, by: try target.registrySigner)
        let dir = try source.makeModel("model", ["model.safetensors": bytes(1_500_000), "config.json": Array(#"{"h":8}"#.utf8)])
        _ = try await source.registry.push(PushRequest(model: "team/m", paths: [dir]), publisher: alice)
        let instance = try OCITestRegistry.plain.get()
        return World(
            source: source,
            target: target,
            alice: alice,
            bob: bob,
            instance: instance,
            repository: "xfer/\(UUID().uuidString.lowercased().prefix(13))"
        )
    }

    func blobsAreEmpty(_ f: RegistryFixture) -> Bool { f.blobDigests().isEmpty }

    @Test("export with stanzas for registry B and bob, skopeo copy to a mirror, import into B: B pulls; bob once B makes him a recipient")
    func exportCopyImport() async throws {
        let w = try await world()
        let targetKey = try w.target.registryKey
        let exported = try await w.source.registry.exportVersion(
            try ModelReference(parsing: "team/m:1"),
            to: w.url,
            recipients: [targetKey.publicIdentity, w.bob.publicIdentity],
            identity: w.alice,
            environment: w.instance.environment
        )
        #expect(exported.blobsSent == 2 && exported.recipients == [targetKey.publicIdentity.keyID, w.bob.publicIdentity.keyID].sorted())
        let again = try await w.source.registry.exportVersion(
            try ModelReference(parsing: "team/m:1"),
            to: w.url,
            recipients: [],
            identity: w.alice,
            environment: w.instance.environment
        )
        #expect(again.blobsSent == 0 && again.manifestDigest == exported.manifestDigest, "the same version exports to the same manifest")

        // A mirror: skopeo copies the version's tag (digest kept) and its referrers tag.
        let mirror = try OCITestRegistry.second.get()
        let skopeo = try OCITestRegistry.binary("skopeo", install: "apt-get install skopeo")
        let referrers = OCIVersionLayout.referrersTag(manifestDigest: exported.manifestDigest)
        for (tag, flags) in [(exported.tag, ["--preserve-digests"]), (referrers, ["--all"])] {
            try OCITestRegistry.run(
                skopeo,
                ["copy"] + flags + [
                    "--src-tls-verify=false", "--dest-tls-verify=false",
                    "docker://\(w.instance.address)/\(w.repository):\(tag)", "docker://\(mirror.address)/\(w.repository):\(tag)",
                ]
            )
        }
        let imported = try await w.target.registry.importVersion(
            from: "\(mirror.url(w.repository)):\(exported.tag)",
            identity: targetKey,
            environment: mirror.environment
        )
        #expect(imported.model == "team/m" && imported.version == "1" && imported.digest == exported.digest)
        let fsck = try await w.target.registry.fsck()
        #expect(fsck.problems.isEmpty, "\(fsck.problems)")
        // bob's stanza in the copy is not taken on trust (unauthenticated, it could be anyone's planting): B wraps for him.
        await expectRefusal("holds no key") {
            _ = try await w.target.registry.pull(try ModelReference(parsing: "team/m:1"), identity: w.bob, into: w.target.path("early"))
        }
        _ = try await w.target.registry.addRecipient(try ModelReference(parsing: "team/m:1"), recipient: w.bob.publicIdentity, identity: targetKey)
        _ = try await w.target.registry.pull(try ModelReference(parsing: "team/m:1"), identity: w.bob, into: w.target.path("bob"))
        #expect(try w.target.read("bob/model.safetensors") == bytes(1_500_000))
        let verified = try await w.target.registry.verify(try ModelReference(parsing: "team/m:1"), readingDataWith: targetKey)
        #expect(verified.signer == "alice" && verified.readData)
        let audit = try await w.target.registry.auditEntries()
        #expect(audit.contains { $0.action == "push" && $0.reason.contains("imported from oci") })

        // Importing it again changes nothing.
        let repeated = try await w.target.registry.importVersion(
            from: "\(w.url):\(exported.tag)",
            identity: targetKey,
            environment: w.instance.environment
        )
        #expect(repeated.digest == exported.digest)
        #expect(try await w.target.registry.list(model: "team/m", where: nil, limit: 10).count == 1)
    }

    @Test("a copy without a stanza for the importer, a forged stanza, an untrusted publisher and a changed blob are refused, nothing kept")
    func refusals() async throws {
        let w = try await world()
        let targetKey = try w.target.registryKey
        let reference = try ModelReference(parsing: "team/m:1")
        let bare = try await w.source.registry.exportVersion(
            reference,
            to: w.url,
            recipients: [],
            identity: w.alice,
            environment: w.instance.environment
        )
        let source = "\(w.url):\(bare.tag)"
        await expectRefusal("no stanza for registry") {
            _ = try await w.target.registry.importVersion(from: source, identity: targetKey, environment: w.instance.environment)
        }

        // Someone with write access to the repository attaches a stanza of a key of their own for registry B.
        let store = try OCIBlobStore(url: w.url, temporaryDirectory: w.target.path("oci-tmp"), environment: w.instance.environment)
        let described = try await store.describeVersion(bare.tag)
        let forged = SecretKey.random().wrap(for: targetKey.publicIdentity).encoded
        try await store.attachKeys(to: described.version, stanzas: [targetKey.publicIdentity.keyID: forged])
        await expectRefusal("is not sealed under the key its stanza opens") {
            _ = try await w.target.registry.importVersion(from: source, identity: targetKey, environment: w.instance.environment)
        }
        #expect(blobsAreEmpty(w.target), "the blobs copied for a refused import are removed")
        #expect(try await w.target.registry.list().isEmpty)

        // A registry that does not trust alice refuses her version whatever its stanzas.
        let stranger = try await RegistryFixture()
        let strangerKey = try stranger.registryKey
        let other = "xfer/\(UUID().uuidString.lowercased().prefix(13))"
        let forStranger = try await w.source.registry.exportVersion(
            reference,
            to: w.instance.url(other),
            recipients: [strangerKey.publicIdentity],
            identity: w.alice,
            environment: w.instance.environment
        )
        await expectRefusal("not a trusted signer") {
            _ = try await stranger.registry.importVersion(
                from: "\(w.instance.url(other)):\(forStranger.tag)",
                identity: strangerKey,
                environment: w.instance.environment
            )
        }

        // A sealed blob changed inside the OCI registry's storage: the copy does not hash to its digest.
        let third = "xfer/\(UUID().uuidString.lowercased().prefix(13))"
        let forB = try await w.source.registry.exportVersion(
            reference,
            to: w.instance.url(third),
            recipients: [targetKey.publicIdentity],
            identity: w.alice,
            environment: w.instance.environment
        )
        let stored = try await w.source.registry.loadVersion(try await w.source.registry.resolve(reference).id)
        let digest = stored.files.first { $0.path == "model.safetensors" }!.sealedSHA256
        let path = "\(w.instance.storage)/docker/registry/v2/blobs/sha256/\(digest.prefix(2))/\(digest)/data"
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        data[data.count - 100] ^= 0x40
        try data.write(to: URL(fileURLWithPath: path))
        await expectRefusal("does not hash to") {
            _ = try await w.target.registry.importVersion(
                from: "\(w.instance.url(third)):\(forB.tag)",
                identity: targetKey,
                environment: w.instance.environment
            )
        }
        #expect(try await w.target.registry.list().isEmpty)
        #expect(blobsAreEmpty(w.target))
        // Restore the shared registry's blob for the other tests.
        data[data.count - 100] ^= 0x40
        try data.write(to: URL(fileURLWithPath: path))
    }

    @Test("into a registry with principals, a publisher of the model imports; only checked stanzas are kept, a planted one is not")
    func importIntoARegistryWithPrincipals() async throws {
        let w = try await world()
        let carol = try person("carol")
        let mallory = try person("mallory")
        // alice, the first principal, is the target's admin.
        try await w.target.registry.addPrincipal(name: "alice", identity: w.alice.publicIdentity, roles: [], by: try w.target.registrySigner)
        let admin = Signer(w.alice)
        try await w.target.registry.addPrincipal(name: "carol", identity: carol.publicIdentity, roles: [.reader, .decrypt], by: admin)
        try await w.target.registry.grant(Grant(principal: "carol", role: .publisher, scope: "team/"), by: admin)
        // Known to the target (a later rekey could wrap for her), but not a decrypt holder: grants carry keys, so one
        // holding decrypt would be given a genuine stanza at import, and the planted one could not be told apart.
        try await w.target.registry.addPrincipal(name: "mallory", identity: mallory.publicIdentity, roles: [.reader], by: admin)
        let exported = try await w.source.registry.exportVersion(
            try ModelReference(parsing: "team/m:1"),
            to: w.url,
            recipients: [carol.publicIdentity],
            identity: w.alice,
            environment: w.instance.environment
        )
        // Whoever writes the repository adds a stanza for mallory, whom the target registry knows.
        let store = try OCIBlobStore(url: w.url, temporaryDirectory: w.target.path("oci-tmp"), environment: w.instance.environment)
        let described = try await store.describeVersion(exported.tag)
        try await store.attachKeys(to: described.version, stanzas: [mallory.publicIdentity.keyID: Array(repeating: 7, count: 120)])

        let imported = try await w.target.registry.importVersion(
            from: "\(w.url):\(exported.tag)",
            identity: carol,
            environment: w.instance.environment
        )
        #expect(imported.digest == exported.digest)
        _ = try await w.target.registry.pull(try ModelReference(parsing: "team/m:1"), identity: carol, into: w.target.path("carol"))
        #expect(try w.target.read("carol/model.safetensors") == bytes(1_500_000))
        let fsck = try await w.target.registry.fsck()
        #expect(fsck.problems.isEmpty, "\(fsck.problems)")
        let id = try await w.target.registry.resolve(try ModelReference(parsing: "team/m:1")).id
        let holders = Set(try await w.target.registry.metadata.wrappedKeys(version: id).map(\.recipientKeyID))
        // Beside the importer's and the registry's, the target's decrypt holders get theirs (grants carry keys).
        let decryptHolders = Set(Registry.decryptHolders(of: "team/m", in: try await w.target.registry.ledgerState()).map(\.keyID))
        #expect(!holders.contains(mallory.publicIdentity.keyID), "the planted stanza is not kept")
        #expect(holders == Set([carol.publicIdentity.keyID, try w.target.registryKey.publicIdentity.keyID]).union(decryptHolders))
    }
}
