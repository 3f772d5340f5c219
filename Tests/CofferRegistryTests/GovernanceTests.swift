import CofferCrypto
import CofferTraining
import Foundation
import GRDB
import Testing

@testable import CofferRegistry

/// Budgets, policies, imported histories, key rotation, recipients and erasure on a real registry directory.
struct GovernanceTests {
    static let passphraseText = "registry passphrase"

    /// A registry owned by alice (admin, and trusted signer) with a one-file model directory.
    private func owned(_ alice: UnlockedIdentity, on backend: MetadataBackend = .sqlite) async throws -> (RegistryFixture, Signer, String) {
        let f = try await RegistryFixture(backend)
        try await f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: f.registrySigner)
        let admin = Signer(alice)
        try await f.registry.trust(alice.publicIdentity, by: admin)
        let dir = try f.makeModel("model", ["weights.bin": bytes(20_000)])
        return (f, admin, dir)
    }

    private func request(_ dir: String, dataset: String?, segments: [PrivacySegment], model: String = "m") -> PushRequest {
        var request = PushRequest(model: model, paths: [dir])
        request.datasetID = dataset
        request.privacy.mechanism = "dp-sgd"
        request.privacy.delta = 1e-5
        request.privacy.segments = segments
        request.privacy.epsilon = Registry.composedEpsilon(segments, delta: 1e-5)
        return request
    }

    @Test(arguments: MetadataBackend.available) func budgetsComposeHistoriesAndRefuseWithoutChangingAnything(on backend: MetadataBackend) async throws
    {
        let alice = try person("alice")
        let (f, admin, dir) = try await owned(alice, on: backend)
        try await f.registry.setBudget(dataset: "census", epsilon: 5, delta: 1e-5, by: admin)
        for bad in ["", "my data", "-x", "a\nb", String(repeating: "d", count: 201)] {
            await #expect(throws: CofferRegistryError.invalidDataset(bad)) {
                try await f.registry.setBudget(dataset: bad, epsilon: 1, delta: 1e-5, by: admin)
            }
        }
        try await f.registry.setBudget(dataset: "hf:org/name@rev+1", epsilon: 1, delta: 1e-5, by: admin)
        // Found by schemathesis: an empty ledger counted at a tiny delta reported a spend (the RDP conversion's floor).
        try await f.registry.setBudget(dataset: "unused", epsilon: 1, delta: 1e-300, by: admin)
        await #expect(try f.registry.budget(dataset: "unused").spent == 0)
        let first = [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 400)]
        await #expect(throws: CofferRegistryError.invalidDataset("my data")) {
            _ = try await f.registry.push(request(dir, dataset: "my data", segments: first), publisher: alice)
        }
        let second = [
            PrivacySegment(sampleRate: 0.02, noiseMultiplier: 0.9, steps: 300), PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.2, steps: 100),
        ]
        _ = try await f.registry.push(request(dir, dataset: "census", segments: first), publisher: alice)
        _ = try await f.registry.push(request(dir, dataset: "census", segments: second), publisher: alice)
        let status = try await f.registry.budget(dataset: "census")
        // Composition, not a sum of epsilons: RDP summed order by order, exactly as one accountant fed every segment.
        var reference = RDPAccountant()
        for segment in first + second { reference.compose(segment) }
        #expect(abs(status.spent - reference.epsilon(delta: 1e-5).epsilon) < 1e-9)
        let alone = status.versions.map(\.epsilon)
        #expect(status.spent < alone.reduce(0, +), "composition is tighter than adding epsilons")

        let before = try await f.registry.list(model: nil, where: nil, limit: 100).count
        let blobsBefore = f.blobDigests().count
        let heavy = [PrivacySegment(sampleRate: 0.05, noiseMultiplier: 0.7, steps: 2000)]
        let refused = await refusal { _ = try await f.registry.push(request(dir, dataset: "census", segments: heavy), publisher: alice) }
        #expect(
            refused.contains("privacy budget exceeded: dataset census") && refused.contains("spent") && refused.contains("remaining"),
            "\(refused)"
        )
        await #expect(try f.registry.list(model: nil, where: nil, limit: 100).count == before)
        #expect(f.blobDigests().count == blobsBefore)
        await #expect(try f.registry.fsck().problems.isEmpty)

        // No history, no charge: even an override does not skip the accounting.
        var bare = request(dir, dataset: "census", segments: [])
        bare.overrideBudget = true
        await expectRefusal("needs the version's accountant history") { _ = try await f.registry.push(bare, publisher: alice) }
        // An admin may exceed the budget; the charge records who did.
        var over = request(dir, dataset: "census", segments: heavy)
        over.overrideBudget = true
        _ = try await f.registry.push(over, publisher: alice)
        let after = try await f.registry.budget(dataset: "census")
        #expect(after.versions.last?.overrideBy == "alice" && after.spent > 5 && after.remaining == 0)
        await #expect(
            try f.registry.auditEntries().contains { $0.action == "push" && $0.outcome == .failed && $0.reason.contains("budget exceeded") }
        )
    }

    /// helper-46: a publisher on one namespace could spend another team's budget by naming its dataset in a push. A
    /// budget that names its models refuses every other model, override or not, and changes nothing on refusal.
    @Test(arguments: MetadataBackend.available) func aBudgetNamingItsModelsRefusesEveryOther(on backend: MetadataBackend) async throws {
        let alice = try person("alice")
        let (f, admin, dir) = try await owned(alice, on: backend)
        for bad in [["team a/"], [], Array(repeating: "m", count: 65), ["../x"]] {
            await #expect(throws: CofferRegistryError.self) {
                try await f.registry.setBudget(dataset: "census", epsilon: 5, delta: 1e-5, models: bad, by: admin)
            }
        }
        try await f.registry.setBudget(dataset: "census", epsilon: 5, delta: 1e-5, models: ["team-a/", "team-a/"], by: admin)
        await #expect(try f.registry.budget(dataset: "census").models == ["team-a/"])
        let segments = [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 400)]
        _ = try await f.registry.push(request(dir, dataset: "census", segments: segments, model: "team-a/m"), publisher: alice)
        let blobs = f.blobDigests().count
        var other = request(dir, dataset: "census", segments: segments, model: "team-b/m")
        other.overrideBudget = true
        let refused = await refusal { _ = try await f.registry.push(other, publisher: alice) }
        #expect(refused == "refused: dataset census's budget is for team-a/ only: team-b/m may not be charged to it", "\(refused)")
        #expect(f.blobDigests().count == blobs)
        await #expect(try f.registry.budget(dataset: "census").versions.map(\.model) == ["team-a/m"])
        // Changing the total keeps the models; * opens the budget to every model again.
        try await f.registry.setBudget(dataset: "census", epsilon: 6, delta: 1e-5, by: admin)
        await #expect(try f.registry.budget(dataset: "census").models == ["team-a/"])
        await expectRefusal("may not be charged") { _ = try await f.registry.push(other, publisher: alice) }
        try await f.registry.setBudget(dataset: "census", epsilon: 6, delta: 1e-5, models: ["*"], by: admin)
        await #expect(try f.registry.budget(dataset: "census").models == nil)
        other.overrideBudget = false
        _ = try await f.registry.push(other, publisher: alice)
        await #expect(try f.registry.budget(dataset: "census").versions.map(\.model) == ["team-a/m", "team-b/m"])
        await #expect(try f.registry.fsck().problems.isEmpty)
    }

    @Test(arguments: MetadataBackend.available) func aPublisherWhoIsNotAdminCannotOverride(on backend: MetadataBackend) async throws {
        let alice = try person("alice")
        let carol = try person("carol")
        let (f, admin, dir) = try await owned(alice, on: backend)
        try await f.registry.addPrincipal(name: "carol", identity: carol.publicIdentity, roles: [.publisher], by: admin)
        try await f.registry.trust(carol.publicIdentity, by: admin)
        try await f.registry.setBudget(dataset: "d", epsilon: 0.1, delta: 1e-5, by: admin)
        var over = request(dir, dataset: "d", segments: [PrivacySegment(sampleRate: 0.05, noiseMultiplier: 0.7, steps: 2000)])
        over.overrideBudget = true
        await expectRefusal("carol lacks the admin role") { _ = try await f.registry.push(over, publisher: carol) }
        await expectRefusal("lacks the admin role") { try await f.registry.setBudget(dataset: "d", epsilon: 9, delta: 1e-5, by: Signer(carol)) }
    }

    @Test(arguments: MetadataBackend.available) func eachPolicyRuleRefusesByName(on backend: MetadataBackend) async throws {
        let alice = try person("alice")
        let (f, admin, dir) = try await owned(alice, on: backend)
        try await f.registry.setBudget(dataset: "d", epsilon: 50, delta: 1e-5, by: admin)
        var pushed = request(dir, dataset: "d", segments: [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 400)])
        pushed.privacy.pruningRatio = 0.3
        _ = try await f.registry.push(pushed, publisher: alice)  // version 1: budgeted, pruned 30%
        _ = try await f.registry.push(
            request(dir, dataset: nil, segments: [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 400)]),
            publisher: alice
        )
        let epsilon = try await f.registry.show(try ModelReference(parsing: "m:1")).privacy.epsilon!
        let cases: [(PolicyRules, String, String)] = [
            (PolicyRules(maxEpsilon: epsilon / 2), "1", "requires epsilon <= \(epsilon / 2); the version has \(epsilon)"),
            (PolicyRules(maxDelta: 1e-6), "1", "requires delta <= 1e-06; the version has 1e-05"),
            (PolicyRules(signer: "bob"), "1", "requires a signature by bob; the version is signed by alice (\(alice.publicIdentity.keyID))"),
            (PolicyRules(minPruningRatio: 0.5), "1", "requires pruning ratio >= 0.5; the version has 0.3"),
            (PolicyRules(requireBudget: true), "2", "requires a version charged to a dataset with a privacy budget"),
        ]
        for (rules, version, expected) in cases {
            try await f.registry.setPolicy(model: "m", alias: "prod", rules: rules, by: admin)
            let refused = await refusal { try await f.registry.setAlias("prod", model: "m", version: version, by: admin) }
            #expect(refused == "policy refused: alias prod of m \(expected)", "\(refused)")
        }
        try await f.registry.setPolicy(
            model: "m",
            alias: "prod",
            rules: PolicyRules(maxEpsilon: epsilon, signer: "alice", requireBudget: true),
            by: admin
        )
        try await f.registry.setAlias("prod", model: "m", version: "1", by: admin)
        // Model-wide rules hold for every alias, on push --alias too, before anything is sealed.
        try await f.registry.setPolicy(model: "m", alias: nil, rules: PolicyRules(maxDelta: 1e-7), by: admin)
        var aliased = request(dir, dataset: nil, segments: [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 1)])
        aliased.alias = "staging"
        await expectRefusal("alias staging of m requires delta <= 1e-07") { _ = try await f.registry.push(aliased, publisher: alice) }
        await #expect(try f.registry.list(model: "m", where: nil, limit: 10).count == 2)
    }

    @Test func importedHistoriesAreRecomputedAndUnderstatedClaimsRefused() async throws {
        func history(_ json: String) throws -> PrivacyHistory {
            try PrivacyHistory(json: try JSONDecoder().decode(JSONValue.self, from: Data(json.utf8)), source: "h.json")
        }
        let reference = PrivacySegment(sampleRate: 256.0 / 60_000, noiseMultiplier: 1.1, steps: 14_062)
        let shapes = [
            #"[{"sample_rate": 0.004266666666666667, "noise_multiplier": 1.1, "steps": 14062}]"#,
            #"[[1.1, 0.004266666666666667, 14062]]"#,
            #"{"history": [[1.1, 0.004266666666666667, 14062]], "epsilon": 2.6, "delta": 1e-5}"#,
        ]
        for shape in shapes {
            var base = PrivacyMetadata()
            base.delta = 1e-5
            let privacy = try history(shape).applied(to: base)
            #expect(privacy.segments == [reference])
            #expect(abs(privacy.epsilon! - 2.3819) < 1e-3 && privacy.accountant == "pld", "the tighter PLD bound")
        }
        #expect(try history(shapes[2]).applied(to: PrivacyMetadata()).claimedEpsilon == 2.6)
        let understated = await refusal {
            _ = try history(#"{"segments": [[1.1, 0.004266666666666667, 14062]], "epsilon": 2.0, "delta": 1e-5}"#).applied(to: PrivacyMetadata())
        }
        #expect(understated.contains("claims epsilon 2.0000, but its segments give 2.38"), "\(understated)")
        await expectRefusal("gives no delta") { _ = try history(#"[[1.1, 1.5, 10]]"#).applied(to: PrivacyMetadata()) }
        var withDelta = PrivacyMetadata()
        withDelta.delta = 1e-5
        await expectRefusal("sample_rate in (0, 1]") { _ = try history(#"[[1.1, 1.5, 10]]"#).applied(to: withDelta) }
        await expectRefusal("has no noise") { _ = try history(#"[[0, 0.01, 10]]"#).applied(to: withDelta) }
        await expectRefusal("entry 1 is neither") { _ = try history(#"[{"sample_rate": 0.01, "steps": -3, "noise_multiplier": 1}]"#) }
        await expectRefusal("the history is empty") { _ = try history(#"[]"#) }
    }

    @Test(arguments: MetadataBackend.available) func rotationRewrapsEveryKeyAndTheOldKeyOpensNothing(on backend: MetadataBackend) async throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let (f, admin, dir) = try await owned(alice, on: backend)
        try await f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [.reader, .decrypt], by: admin)
        for _ in 0..<3 { _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice) }
        try await f.registry.addRecipient(try ModelReference(parsing: "m"), recipient: bob.publicIdentity, identity: alice)
        let registryKey = { () throws -> UnlockedIdentity in
            UnlockedIdentity(try Identity.decrypt(keyFile: try f.read("home/registry.key"), passphrase: passphrase(Self.passphraseText)))
        }
        let old = try registryKey()
        await #expect(try f.registry.signAuditHead(with: old) > 0)
        let fresh = try await f.registry.rotateKey(
            current: old,
            passphrase: passphrase(Self.passphraseText),
            kdf: KDFParameters(opsLimit: 1, memLimit: 8192),
            by: admin
        )

        let reopened = try await f.reopen()
        await #expect(try reopened.identity == fresh)
        let current = try registryKey()
        #expect(current.publicIdentity == fresh, "registry.key now holds the new key")
        for version in ["1", "2", "3"] {
            let stored = try await reopened.loadVersion(try await reopened.resolve(try ModelReference(parsing: "m:\(version)")).id)
            await #expect(throws: CofferRegistryError.self) { _ = try await reopened.unwrapDataKey(stored, identity: old) }
            _ = try await reopened.unwrapDataKey(stored, identity: current)
            _ = try await reopened.pull(try ModelReference(parsing: "m:\(version)"), identity: bob, into: f.path("out\(version)"))
        }
        #expect(try f.read("out2/weights.bin") == bytes(20_000))
        let report = try await reopened.verifyAudit()
        #expect(report.signedThrough > 0, "heads signed by the retired key still verify")
        _ = try await reopened.signAuditHead(with: current)
        await #expect(try reopened.verifyAudit().unsigned == 0)
        await #expect(try reopened.fsck().problems.isEmpty)
    }

    @Test(arguments: MetadataBackend.available) func recipientsCanBeRemoved(on backend: MetadataBackend) async throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let (f, admin, dir) = try await owned(alice, on: backend)
        // bob is granted decrypt after the push, without the registry's key: the version's key is not wrapped for him.
        _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
        try await f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [.reader, .decrypt], by: admin)
        await expectRefusal("holds no key") { _ = try await f.registry.pull(try ModelReference(parsing: "m"), identity: bob, into: f.path("a")) }
        try await f.registry.addRecipient(try ModelReference(parsing: "m:1"), recipient: bob.publicIdentity, identity: alice)
        _ = try await f.registry.pull(try ModelReference(parsing: "m"), identity: bob, into: f.path("b"))
        await #expect(
            try f.registry.removeRecipient(
                try ModelReference(parsing: "m"),
                keyID: bob.publicIdentity.keyID,
                by: try f.registry.principal(for: alice.identity)
            ) == 1
        )
        await expectRefusal("holds no key") { _ = try await f.registry.pull(try ModelReference(parsing: "m"), identity: bob, into: f.path("c")) }
        await expectRefusal("never removed") {
            try await f.registry.removeRecipient(
                try ModelReference(parsing: "m"),
                keyID: try f.registry.identity.keyID,
                by: try f.registry.principal(for: alice.identity)
            )
        }
    }

    /// Through a registry opened with one SQLite connection (a command's) as with a pool (a server's).
    @Test(arguments: [SQLiteConnections.pool, .one])
    func erasureLeavesNothingDecryptableEvenFromABackup(connections: SQLiteConnections) async throws {
        let alice = try person("alice")
        let (f, admin, dir) = try await owned(alice)
        try await f.registry.setBudget(dataset: "d", epsilon: 10, delta: 1e-5, by: admin)
        _ = try await f.registry.push(
            request(dir, dataset: "d", segments: [PrivacySegment(sampleRate: 0.01, noiseMultiplier: 1.0, steps: 400)]),
            publisher: alice
        )
        _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
        try await f.registry.setAlias("prod", model: "m", version: "1", by: admin)
        let spent = try await f.registry.budget(dataset: "d").spent
        let stanzas = try await DatabaseQueue(path: "\(f.home)/registry.sqlite").read { db in
            try Data.fetchAll(db, sql: "SELECT stanza FROM wrapped_keys WHERE version_id = 1")
        }
        #expect(stanzas.count == 2, "the registry's and the publisher's")
        // A backup of the blob store's files, as an operator's would be.
        for digest in f.blobDigests() {
            try FileManager.default.createDirectory(atPath: f.path("backup/sha256/\(digest.prefix(2))"), withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: f.blobPath(digest), toPath: f.path("backup/sha256/\(digest.prefix(2))/\(digest)"))
        }

        let eraser = connections == .pool ? f.registry : try await Registry(at: f.home, memory: f.memory, sqlite: .one)
        await #expect(try eraser.erase(model: "m", version: "1", by: admin) == ["m:1"])
        // The keys are gone from the database, its free pages and its log once the erasure returns (a later commit
        // through the other registry would truncate the log too).
        for name in ["registry.sqlite", "registry.sqlite-wal"] {
            guard let file = FileManager.default.contents(atPath: "\(f.home)/\(name)") else { continue }
            for stanza in stanzas { #expect(file.range(of: stanza) == nil, "an erased key stanza survives in \(name)") }
        }
        let erasedPull = await refusal { _ = try await f.registry.pull(try ModelReference(parsing: "m:1"), identity: alice, into: f.path("out")) }
        #expect(erasedPull.contains("m:1 was erased at") && erasedPull.contains("by alice"))
        let shown = try await f.registry.show(try ModelReference(parsing: "m:1"))
        #expect(shown.erasedBy == "alice" && shown.erasedAt != nil && shown.aliases.isEmpty)
        await expectRefusal("was erased") { _ = try await f.registry.verify(try ModelReference(parsing: "m:1")) }
        await #expect(try f.registry.budget(dataset: "d").spent == spent, "erasure refunds nothing")
        let fsck = try await f.registry.fsck()
        #expect(fsck.problems.isEmpty, "\(fsck.problems)")
        _ = try await f.registry.pull(try ModelReference(parsing: "m:2"), identity: alice, into: f.path("still"))

        // The backup's blobs hold no stanza.
        let registryKey = try Identity.decrypt(keyFile: try f.read("home/registry.key"), passphrase: passphrase(Self.passphraseText))
        let erasedBlob = try await f.registry.show(try ModelReference(parsing: "m:1")).files[0].sealedSHA256
        let backup = f.path("backup/sha256/\(erasedBlob.prefix(2))/\(erasedBlob)")
        #expect(FileManager.default.fileExists(atPath: backup) && !f.blobExists(erasedBlob))
        for identity in [0, 1] {
            let source = try FileDescriptorStream(readingFrom: backup)
            #expect(throws: CofferCryptoError.self) {
                if identity == 0 {
                    _ = try SealedFile.open(from: source, to: DiscardingSink(), identity: alice.identity)
                } else {
                    _ = try SealedFile.open(from: source, to: DiscardingSink(), identity: registryKey)
                }
            }
        }
        await #expect(try f.registry.auditEntries().contains { $0.action == "erase" && $0.target == "m:1" })
    }
}

extension GovernanceTests {
    /// Another process's read transaction holds a snapshot, which blocks the truncation of the log after an erasure:
    /// the erasure stands, and the truncation is carried out by a later commit of another open registry (a server's),
    /// or else by the next open.
    @Test func anErasureALongReadKeepsInTheLogIsTruncatedAwayLater() async throws {
        let alice = try person("alice")
        let (f, admin, dir) = try await owned(alice)
        let database = "\(f.home)/registry.sqlite"
        func stanzas(_ version: Int) async throws -> [Data] {
            try await DatabaseQueue(path: database).read { db in
                try Data.fetchAll(db, sql: "SELECT stanza FROM wrapped_keys WHERE version_id = ?", arguments: [version])
            }
        }
        func filesHolding(_ stanzas: [Data]) -> [String] {
            ["registry.sqlite", "registry.sqlite-wal"].filter { name in
                let file = FileManager.default.contents(atPath: "\(f.home)/\(name)") ?? Data()
                return stanzas.contains { file.range(of: $0) != nil }
            }
        }
        var holding = Configuration()
        holding.allowsUnsafeTransactions = true
        let reader = try DatabaseQueue(path: database, configuration: holding)
        func eraseWhileReading(_ version: Int) async throws -> [Data] {
            _ = try await f.registry.push(PushRequest(model: "m", paths: [dir]), publisher: alice)
            let erased = try await stanzas(version)
            try reader.inDatabase { db in
                try db.execute(sql: "BEGIN")
                _ = try Int.fetchOne(db, sql: "SELECT count(*) FROM versions")
            }
            let impatient = try await f.reopen(busyTimeout: 0.2)
            await #expect(try impatient.erase(model: "m", version: "\(version)", by: admin) == ["m:\(version)"])
            #expect(filesHolding(erased) == ["registry.sqlite-wal"], "the reader's snapshot kept the log's frames")
            try reader.inDatabase { db in try db.execute(sql: "COMMIT") }
            return erased
        }

        let first = try await eraseWhileReading(1)
        try await f.registry.setBudget(dataset: "d", epsilon: 1, delta: 1e-5, by: admin)  // any commit
        #expect(filesHolding(first).isEmpty)
        let second = try await eraseWhileReading(2)
        _ = try await f.reopen()
        #expect(filesHolding(second).isEmpty)
        await expectRefusal("was erased") { _ = try await f.registry.verify(try ModelReference(parsing: "m:1")) }
    }

    @Test(arguments: MetadataBackend.available) func rekeyLocksOutAKeptDataKeyAndEveryoneElseStillPulls(on backend: MetadataBackend) async throws {
        let alice = try person("alice")
        let bob = try person("bob")
        let carol = try person("carol")
        let (f, admin, dir) = try await owned(alice, on: backend)
        for (name, who) in [("bob", bob.publicIdentity), ("carol", carol.publicIdentity)] {
            try await f.registry.addPrincipal(name: name, identity: who, roles: [.reader, .decrypt], by: admin)
        }
        var request = PushRequest(model: "m", paths: [dir])
        request.recipients = [bob.publicIdentity, carol.publicIdentity]
        _ = try await f.registry.push(request, publisher: alice)
        let reference = try ModelReference(parsing: "m:1")
        // Carol keeps the data key, then loses her access.
        let stored = try await f.registry.loadVersion(try await f.registry.resolve(reference).id)
        let kept = try await f.registry.unwrapDataKey(stored, identity: carol)
        let oldBlob = stored.files[0].sealedSHA256
        await #expect(
            try f.registry.removeRecipient(reference, keyID: carol.publicIdentity.keyID, by: try f.registry.principal(for: alice.identity)) == 1
        )

        let result = try await f.registry.rekey(reference, registryIdentity: try f.registryKey, by: admin)
        await #expect(
            Set(result.recipients) == [try f.registry.identity.keyID, alice.publicIdentity.keyID, bob.publicIdentity.keyID] && result.dropped.isEmpty
        )
        #expect(!f.blobExists(oldBlob), "the blobs under the old key are gone")
        let (current, _) = try await f.registry.authenticate(try await f.registry.loadVersion(stored.id))
        #expect(current.files[0].sealedSHA256 != oldBlob && current.files[0].plaintextSHA256 == stored.files[0].plaintextSHA256)
        let source = try FileDescriptorStream(readingFrom: f.blobPath(current.files[0].sealedSHA256))
        let (header, length) = try SealedFileHeader.read(from: source)
        #expect(throws: CofferCryptoError.self) {
            _ = try SealedFile.openPayload(from: source, to: DiscardingSink(), header: header, headerLength: length, dataKey: kept.key)
        }
        for (who, out) in [(0, "a"), (1, "b")] {
            if who == 0 {
                _ = try await f.registry.pull(reference, identity: alice, into: f.path(out))
            } else {
                _ = try await f.registry.pull(reference, identity: bob, into: f.path(out))
            }
            #expect(try f.read("\(out)/weights.bin") == bytes(20_000))
        }
        await #expect(try f.registry.verify(reference).files == 1)
        let fsck = try await f.registry.fsck()
        #expect(fsck.problems.isEmpty && fsck.orphanBlobs.isEmpty, "\(fsck.problems) \(fsck.orphanBlobs)")

        // The re-encrypted files are bound to the registry's signed record.
        try await f.tamper("UPDATE rekeyed_files SET sealed_size = sealed_size + 1")
        await expectRefusal("the re-encrypted files table disagrees with the rekey attestation") { _ = try await f.registry.verify(reference) }
    }
}
