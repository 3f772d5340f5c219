import CofferCrypto
import Foundation
import Testing

@testable import CofferRegistry

/// Grants that carry keys (issue 20): share, push to decrypt holders, revoke, unshare, on a real registry.
struct ShareTests {
    /// alice owns the registry (admin, trusted); bob and carol are principals with no grant; icu/mortality has two
    /// versions pushed by alice.
    private func world(
        on backend: MetadataBackend
    ) async throws -> (RegistryFixture, alice: UnlockedIdentity, bob: UnlockedIdentity, carol: UnlockedIdentity) {
        let f = try await RegistryFixture(backend)
        let alice = try person("alice")
        let bob = try person("bob")
        let carol = try person("carol")
        try await f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: f.registrySigner)
        try await f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [], by: Signer(alice))
        try await f.registry.addPrincipal(name: "carol", identity: carol.publicIdentity, roles: [], by: Signer(alice))
        try await f.registry.trust(alice.publicIdentity, by: Signer(alice))
        for n in 1...2 { try await push(f, "icu/mortality", n, alice) }
        return (f, alice, bob, carol)
    }

    private func push(_ f: RegistryFixture, _ model: String, _ n: Int, _ publisher: UnlockedIdentity) async throws {
        let dir = try f.makeModel("src-\(model.replacingOccurrences(of: "/", with: "-"))-\(n)", ["weights.bin": bytes(3000, seed: UInt8(n))])
        _ = try await f.registry.push(PushRequest(model: model, paths: [dir]), publisher: publisher)
    }

    private func pulls(_ f: RegistryFixture, _ reference: String, _ who: UnlockedIdentity) async throws -> [UInt8] {
        let out = "out-\(UUID().uuidString)"
        _ = try await f.registry.pull(try ModelReference(parsing: reference), identity: who, into: f.path(out))
        return try f.read("\(out)/weights.bin")
    }

    @Test(arguments: MetadataBackend.available) func aPullShareReachesEveryVersionPresentAndFuture(on backend: MetadataBackend) async throws {
        let (f, alice, bob, carol) = try await world(on: backend)
        let shared = try await f.registry.share("icu/", with: "bob", mode: .pull, registryIdentity: try f.registryKey, by: Signer(alice))
        #expect(shared.granted.map(\.role) == [.reader, .decrypt])
        #expect(shared.wrapped.sorted() == ["icu/mortality:1", "icu/mortality:2"])
        #expect(shared.pending.isEmpty)
        #expect(try await pulls(f, "icu/mortality:1", bob) == bytes(3000, seed: 1))
        #expect(try await pulls(f, "icu/mortality:2", bob) == bytes(3000, seed: 2))
        // A version pushed after the grant, to a model made after it, is wrapped for bob at push: no recipient add.
        try await push(f, "icu/mortality", 3, alice)
        try await push(f, "icu/sepsis", 1, alice)
        #expect(try await pulls(f, "icu/mortality:3", bob) == bytes(3000, seed: 3))
        #expect(try await pulls(f, "icu/sepsis:1", bob) == bytes(3000, seed: 1))
        // Outside the scope, and for someone not shared with, nothing changes.
        try await push(f, "other/x", 1, alice)
        await expectRefusal("bob lacks the reader role on other/x") { _ = try await pulls(f, "other/x:1", bob) }
        await expectRefusal("carol lacks the reader role on icu/mortality") { _ = try await pulls(f, "icu/mortality:3", carol) }
        let carolKeys = try await f.registry.metadata.wrappedKeys(recipient: carol.publicIdentity.keyID)
        #expect(carolKeys.isEmpty)
        // Sharing again records nothing new and wraps nothing twice.
        let again = try await f.registry.share("icu/", with: "bob", mode: .pull, registryIdentity: try f.registryKey, by: Signer(alice))
        #expect(again.granted.isEmpty && again.wrapped.isEmpty && again.pending.isEmpty)
        // Only an admin shares, and only with the registry's own key.
        await expectRefusal("bob lacks the admin role") {
            _ = try await f.registry.share("icu/", with: "carol", mode: .pull, registryIdentity: try f.registryKey, by: Signer(bob))
        }
        await expectRefusal("needs the registry's own identity") {
            _ = try await f.registry.share("icu/", with: "carol", mode: .pull, registryIdentity: bob, by: Signer(alice))
        }
        await #expect(throws: CofferRegistryError.unknownPrincipal("dave")) {
            _ = try await f.registry.share("icu/", with: "dave", mode: .pull, registryIdentity: try f.registryKey, by: Signer(alice))
        }
    }

    @Test(arguments: MetadataBackend.available) func aShareWithoutTheRegistryKeyNamesWhatIsPendingAndAServerWrapsItOnDemand(
        on backend: MetadataBackend
    ) async throws {
        let (f, alice, bob, carol) = try await world(on: backend)
        let shared = try await f.registry.share("icu/mortality", with: "bob", mode: .pull, registryIdentity: nil, by: Signer(alice))
        #expect(shared.wrapped.isEmpty && shared.pending.sorted() == ["icu/mortality:1", "icu/mortality:2"])
        await #expect(throws: CofferRegistryError.notARecipient("icu/mortality:1")) { _ = try await pulls(f, "icu/mortality:1", bob) }
        // What a server does with the key it holds: wraps for bob's registered key, once, and audits it.
        let reference = try ModelReference(parsing: "icu/mortality:1")
        let package = try await f.registry.package(
            reference,
            keyID: bob.publicIdentity.keyID,
            includeKey: true,
            for: "bob",
            registryIdentity: try f.registryKey
        )
        let stanza = try #require(package.stanza.flatMap { Data(base64Encoded: $0) })
        let opened = try WrappedKey(encoded: Array(stanza)).unwrap(with: bob.identity)
        _ = opened
        let audit = try await f.registry.auditEntries().last { $0.action == "pull" && $0.outcome == .ok }
        #expect(audit?.reason.contains("wrapped on demand and released") == true, "\(audit?.reason ?? "-")")
        #expect(try await pulls(f, "icu/mortality:1", bob) == bytes(3000, seed: 1))
        // Never for a key the ledger does not name for the caller.
        let forCarol = try await f.registry.package(
            reference,
            keyID: carol.publicIdentity.keyID,
            includeKey: true,
            for: "bob",
            registryIdentity: try f.registryKey
        )
        #expect(forCarol.stanza == nil)
        // The grant made later with the registry key wraps only what is still missing.
        let completed = try await f.registry.share("icu/mortality", with: "bob", mode: .pull, registryIdentity: try f.registryKey, by: Signer(alice))
        #expect(completed.granted.isEmpty && completed.wrapped == ["icu/mortality:2"] && completed.pending.isEmpty)
    }

    @Test(arguments: MetadataBackend.available) func anUnsharedPrincipalOpensNothingPresentOrFuture(on backend: MetadataBackend) async throws {
        let (f, alice, bob, _) = try await world(on: backend)
        _ = try await f.registry.share("icu/", with: "bob", mode: .pull, registryIdentity: try f.registryKey, by: Signer(alice))
        _ = try await f.registry.share("icu/", with: "bob", mode: .infer, registryIdentity: nil, by: Signer(alice))
        let token = try await f.registry.createToken(principal: "bob", scope: .read, ttl: 600, by: Signer(alice))
        let tokenID = token.info.id
        let session = try await f.registry.openSession(try ModelReference(parsing: "icu/mortality:2"), identity: bob, ttl: 600)
        #expect(try await pulls(f, "icu/mortality:1", bob) == bytes(3000, seed: 1))

        await expectRefusal("bob lacks the admin role") { _ = try await f.registry.unshare("bob", by: Signer(bob)) }
        let ended = try await f.registry.unshare("bob", by: Signer(alice))
        #expect(Set(ended.revoked.map(\.role)) == [.reader, .decrypt, .inference])
        #expect(ended.tokens == [tokenID])
        #expect(ended.sessions == [session.info.id])
        #expect(ended.removedKeys.sorted() == ["icu/mortality:1", "icu/mortality:2"])
        #expect(ended.toRekey.sorted() == ended.removedKeys.sorted() && ended.rekeyed.isEmpty)
        let left = try await f.registry.metadata.wrappedKeys(recipient: bob.publicIdentity.keyID)
        #expect(left.isEmpty)
        await expectRefusal("bob lacks the reader role") { _ = try await pulls(f, "icu/mortality:1", bob) }
        await expectRefusal("was revoked") { _ = try await f.registry.authenticateToken(token.token.text()) }
        await expectRefusal("bob no longer holds the inference role on icu/mortality") {
            _ = try await InferenceSession(registry: f.registry, token: session.token)
        }
        // Future: a version pushed after the unshare is not wrapped for bob; a reader grant alone opens nothing.
        try await push(f, "icu/mortality", 3, alice)
        let future = try await f.registry.metadata.wrappedKeys(recipient: bob.publicIdentity.keyID)
        #expect(future.isEmpty)
        try await f.registry.grant(Grant(principal: "bob", role: .reader, scope: "icu/"), by: Signer(alice))
        await expectRefusal("bob lacks the decrypt role") { _ = try await pulls(f, "icu/mortality:3", bob) }
        let audit = try await f.registry.auditEntries().last { $0.action == "unshare" }
        #expect(audit?.reason.contains("3 grants, 1 tokens, 1 sessions, 2 keys") == true, "\(audit?.reason ?? "-")")
    }

    @Test(arguments: MetadataBackend.available) func unsharingOneModelKeepsWiderGrantsAndRekeysWhatWasOpen(on backend: MetadataBackend) async throws {
        let (f, alice, bob, carol) = try await world(on: backend)
        try await push(f, "icu/sepsis", 1, alice)
        _ = try await f.registry.share("icu/mortality", with: "bob", mode: .pull, registryIdentity: try f.registryKey, by: Signer(alice))
        _ = try await f.registry.share("icu/sepsis", with: "bob", mode: .pull, registryIdentity: try f.registryKey, by: Signer(alice))
        _ = try await f.registry.share("icu/", with: "carol", mode: .pull, registryIdentity: try f.registryKey, by: Signer(alice))
        let blobsBefore = Set(f.blobDigests())

        let ended = try await f.registry.unshare("bob", model: "icu/mortality", rekeyWith: try f.registryKey, by: Signer(alice))
        #expect(ended.revoked.count == 2 && ended.kept.isEmpty && ended.tokens.isEmpty)
        #expect(ended.rekeyed.sorted() == ["icu/mortality:1", "icu/mortality:2"] && ended.toRekey.isEmpty)
        // Two blobs replaced by two re-encrypted ones: the old ciphertext, under keys bob held, is gone.
        let blobsAfter = Set(f.blobDigests())
        #expect(blobsBefore.subtracting(blobsAfter).count == 2 && blobsAfter.subtracting(blobsBefore).count == 2)
        await expectRefusal("bob lacks the reader role on icu/mortality") { _ = try await pulls(f, "icu/mortality:1", bob) }
        // bob keeps sepsis; carol, who holds decrypt on icu/, pulls the re-encrypted versions.
        #expect(try await pulls(f, "icu/sepsis:1", bob) == bytes(3000, seed: 1))
        #expect(try await pulls(f, "icu/mortality:1", carol) == bytes(3000, seed: 1))
        // Unsharing carol from one model of her namespace grant revokes nothing and says what still covers it.
        let narrow = try await f.registry.unshare("carol", model: "icu/mortality", by: Signer(alice))
        #expect(narrow.revoked.isEmpty && narrow.removedKeys.isEmpty && narrow.kept.map(\.scope) == ["icu/", "icu/"])
        #expect(try await pulls(f, "icu/mortality:2", carol) == bytes(3000, seed: 2))
        // A '*' share is unshared by its scope too, and only its grants end.
        _ = try await f.registry.share("*", with: "bob", mode: .pull, registryIdentity: try f.registryKey, by: Signer(alice))
        let everything = try await f.registry.unshare("bob", model: "*", by: Signer(alice))
        #expect(everything.revoked.map(\.scope) == ["*", "*"] && everything.tokens.isEmpty)
        await expectRefusal("bob lacks the reader role on icu/mortality") { _ = try await pulls(f, "icu/mortality:1", bob) }
        #expect(try await pulls(f, "icu/sepsis:1", bob) == bytes(3000, seed: 1), "the grant on icu/sepsis stands")
    }

    @Test(arguments: MetadataBackend.available) func revokingDecryptDeletesTheKeysItCarriedAndNamesThem(on backend: MetadataBackend) async throws {
        let (f, alice, bob, _) = try await world(on: backend)
        try await f.registry.grant(Grant(principal: "bob", role: .reader, scope: "icu/"), by: Signer(alice))
        try await f.registry.grant(Grant(principal: "bob", role: .decrypt, scope: "icu/"), registryIdentity: try f.registryKey, by: Signer(alice))
        #expect(try await pulls(f, "icu/mortality:2", bob) == bytes(3000, seed: 2))
        let removed = try await f.registry.revokeReporting(Grant(principal: "bob", role: .decrypt, scope: "icu/"), by: Signer(alice))
        #expect(removed?.sorted() == ["icu/mortality:1", "icu/mortality:2"])
        await expectRefusal("bob lacks the decrypt role") { _ = try await pulls(f, "icu/mortality:2", bob) }
        let notHeld = try await f.registry.revokeReporting(Grant(principal: "bob", role: .decrypt, scope: "icu/"), by: Signer(alice))
        #expect(notHeld == nil)
        // Removing a principal takes every key it held (the publisher's own included).
        try await f.registry.grant(Grant(principal: "bob", role: .decrypt, scope: "*"), registryIdentity: try f.registryKey, by: Signer(alice))
        #expect(try await f.registry.metadata.wrappedKeys(recipient: bob.publicIdentity.keyID).count == 2)
        try await f.registry.removePrincipal("bob", by: Signer(alice))
        #expect(try await f.registry.metadata.wrappedKeys(recipient: bob.publicIdentity.keyID).isEmpty)
        #expect(try await f.registry.fsck().problems.isEmpty)
    }

    @Test(arguments: MetadataBackend.available) func anInferenceShareBoundsEverySessionAndCountsPredictions(on backend: MetadataBackend) async throws
    {
        let (f, alice, _, carol) = try await world(on: backend)
        let shared = try await f.registry.share(
            "icu/mortality",
            with: "carol",
            mode: .infer,
            maxSessionSeconds: 86_400,
            maxPredictions: 100,
            registryIdentity: nil,
            by: Signer(alice)
        )
        #expect(
            shared.granted == [Grant(principal: "carol", role: .inference, scope: "icu/mortality", maxSessionSeconds: 86_400, maxPredictions: 100)]
        )
        let reference = try ModelReference(parsing: "icu/mortality:2")
        // carol holds no key: an inference-only principal's sessions are opened by a server, with the registry's key.
        await expectRefusal("carol holds no key for icu/mortality:2: an inference grant opens sessions through coffer serve") {
            _ = try await f.registry.openSession(reference, identity: carol, ttl: 60)
        }
        let server = try f.registryKey
        let asCarol = Principal(name: "carol", keyID: carol.publicIdentity.keyID)
        func open(ttl: TimeInterval, maxUses: Int? = nil) async throws -> OpenedSession {
            try await f.registry.openSession(reference, principal: asCarol, unwrappingWith: server, ttl: ttl, maxUses: maxUses)
        }
        await expectRefusal("carol's inference grant allows sessions of at most 86400 s (asked for 31536000 s)") {
            _ = try await open(ttl: 31_536_000)
        }
        await expectRefusal("has 100 predictions left (asked for 101)") {
            _ = try await open(ttl: 60, maxUses: 101)
        }
        // A session takes what is left unless it asks for less, and holds it while it is open.
        let first = try await open(ttl: 3600)
        #expect(first.info.maxUses == 100)
        await expectRefusal("carol's inference grant on icu/mortality has no predictions left") {
            _ = try await open(ttl: 60)
        }
        try await f.registry.useSession(id: first.info.id, principal: "carol", uses: 60)
        await expectRefusal("has 40 of its 100 uses left, and this call needs 41") {
            try await f.registry.useSession(id: first.info.id, principal: "carol", uses: 41)
        }
        // Closed, it counts what it spent: 40 are left for the next one.
        try await f.registry.revokeSession(id: first.info.id, identity: carol)
        let second = try await open(ttl: 60)
        #expect(second.info.maxUses == 40)
        let refusals = try await f.registry.auditEntries().filter { $0.action == "session.open" && $0.outcome == .refused }
        #expect(refusals.count == 3)
        // Granting again with other limits replaces them and starts the count again.
        try await f.registry.revokeSession(id: second.info.id, identity: carol)
        _ = try await f.registry.share("icu/mortality", with: "carol", mode: .infer, maxPredictions: 500, registryIdentity: nil, by: Signer(alice))
        let grants = try await f.registry.grants(of: "carol")
        #expect(grants == [Grant(principal: "carol", role: .inference, scope: "icu/mortality", maxPredictions: 500)])
        let third = try await open(ttl: 31_536_000)
        #expect(third.info.maxUses == 500)
        // Tightened in place, the grant ends the sessions opened under the old limits: none outlives or outspends it.
        let tightened = try await f.registry.share(
            "icu/mortality",
            with: "carol",
            mode: .infer,
            maxSessionSeconds: 60,
            maxPredictions: 2,
            registryIdentity: nil,
            by: Signer(alice)
        )
        #expect(tightened.endedSessions == [third.info.id])
        await expectRefusal("was revoked at") { try await f.registry.useSession(id: third.info.id, principal: "carol", uses: 1) }
        await expectRefusal("allows sessions of at most 60 s") { _ = try await open(ttl: 3600) }
        let fourth = try await open(ttl: 60)
        #expect(fourth.info.maxUses == 2)
        _ = try await f.registry.share("icu/mortality", with: "carol", mode: .infer, maxPredictions: 500, registryIdentity: nil, by: Signer(alice))
        // The limits are in the signed ledger: a client replaying it from the start reads them back.
        let stranger = try await Registry(at: f.home, memory: ClientMemory(directory: f.path("stranger")))
        #expect(try await stranger.grants(of: "carol") == grants)
        // Revoking by name finds the grant whatever its limits.
        #expect(try await f.registry.revoke(Grant(principal: "carol", role: .inference, scope: "icu/mortality"), by: Signer(alice)))
        #expect(try await f.registry.grants(of: "carol").isEmpty)
        // Limits are for inference, set by an admin, within range.
        await expectRefusal("apply to inference") {
            _ = try await f.registry.share("icu/", with: "carol", mode: .pull, maxPredictions: 5, registryIdentity: nil, by: Signer(alice))
        }
        await expectRefusal("apply to inference grants only") {
            try await f.registry.grant(Grant(principal: "carol", role: .reader, scope: "icu/", maxPredictions: 5), by: Signer(alice))
        }
        await expectRefusal("at most 365 days") {
            _ = try await f.registry.share(
                "icu/",
                with: "carol",
                mode: .infer,
                maxSessionSeconds: 40_000_000,
                registryIdentity: nil,
                by: Signer(alice)
            )
        }
        #expect(try await f.registry.fsck().problems.isEmpty)
    }

    /// Sessions opened at once under a grant's prediction limit hold no more than the limit between them: each is
    /// decided again inside its commit (helper-46: eight parallel opens under a limit of 10 got 60 predictions).
    @Test(arguments: MetadataBackend.available) func opensAtOnceNeverHoldMoreThanTheGrantAllows(on backend: MetadataBackend) async throws {
        let (f, alice, _, carol) = try await world(on: backend)
        _ = try await f.registry.share("icu/mortality", with: "carol", mode: .infer, maxPredictions: 10, registryIdentity: nil, by: Signer(alice))
        let reference = try ModelReference(parsing: "icu/mortality:2")
        let server = try f.registryKey
        let asCarol = Principal(name: "carol", keyID: carol.publicIdentity.keyID)
        let registry = f.registry
        let outcomes = await withTaskGroup(of: Result<Int, CofferRegistryError>.self) { group in
            for n in 0..<8 {
                group.addTask {
                    do throws(CofferRegistryError) {
                        let opened = try await registry.openSession(
                            reference,
                            principal: asCarol,
                            unwrappingWith: server,
                            ttl: 600,
                            maxUses: n.isMultiple(of: 2) ? nil : 3
                        )
                        return .success(opened.info.maxUses ?? Int.max)
                    } catch { return .failure(error) }
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        let held = outcomes.compactMap { try? $0.get() }
        #expect(!held.isEmpty && held.reduce(0, +) <= 10, "\(outcomes)")
        // Those that took what was left say so; those that asked for 3 say what is left against what they asked.
        for case .failure(let error) in outcomes {
            let said = error.description
            #expect(said.contains("carol's inference grant on icu/mortality has"), "\(error)")
            #expect(
                said.hasSuffix("sessions opened meanwhile took the rest") || said.hasSuffix("(asked for 3)") || said.contains("no predictions left"),
                "\(said)"
            )
        }
        let sessions = try await f.registry.sessions().filter { $0.principal == "carol" }
        #expect(sessions.compactMap(\.maxUses).reduce(0, +) <= 10 && sessions.count == held.count, "\(sessions)")
    }

    /// Uploads started at once never pass the cap of unfinished uploads: the count is made again inside each commit
    /// (helper-46 started 69 under a cap of 64 over HTTP).
    @Test(arguments: MetadataBackend.available) func uploadsStartedAtOnceNeverPassTheCap(on backend: MetadataBackend) async throws {
        let (f, alice, _, _) = try await world(on: backend)
        let owner = Principal(name: "alice", keyID: alice.publicIdentity.keyID)
        let registry = f.registry
        for _ in 0..<(Registry.maximumOpenUploads - 4) { _ = try await registry.startUpload(by: owner) }
        let outcomes = await withTaskGroup(of: Result<UploadState, CofferRegistryError>.self) { group in
            for _ in 0..<12 {
                group.addTask {
                    do throws(CofferRegistryError) { return .success(try await registry.startUpload(by: owner)) } catch { return .failure(error) }
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(outcomes.filter { (try? $0.get()) != nil }.count == 4, "\(outcomes)")
        for case .failure(let error) in outcomes {
            #expect(error.description.contains("alice has 64 unfinished uploads, the most one may hold"), "\(error)")
        }
        #expect(try await f.registry.metadata.uploads(principal: "alice").count == Registry.maximumOpenUploads)
    }

    @Test func aPushWrapsForEveryDecryptHolderAtThatMoment() async throws {
        let f = try await RegistryFixture(.sqlite)
        let alice = try person("alice")
        try await f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: f.registrySigner)
        try await f.registry.trust(alice.publicIdentity, by: Signer(alice))
        var holders: [UnlockedIdentity] = []
        for n in 0..<50 {
            let holder = try person("p\(n)")
            try await f.registry.addPrincipal(name: "p\(n)", identity: holder.publicIdentity, roles: [], by: Signer(alice))
            try await f.registry.grant(Grant(principal: "p\(n)", role: n.isMultiple(of: 2) ? .decrypt : .reader, scope: "m"), by: Signer(alice))
            holders.append(holder)
        }
        try await push(f, "m", 1, alice)
        let id = try #require(try await f.registry.metadata.version(model: "m", version: "1")).id
        let keyIDs = Set(try await f.registry.metadata.wrappedKeys(version: id).map(\.recipientKeyID))
        for (n, holder) in holders.enumerated() { #expect(keyIDs.contains(holder.publicIdentity.keyID) == n.isMultiple(of: 2)) }
        // registry, alice (admin implies decrypt, and she published), and the 25 decrypt holders.
        #expect(keyIDs.count == 27)
    }
}
