import CofferCrypto
import Foundation
import Testing

@testable import CofferRegistry

/// Change requests (docs/FORMAT.md, "Change requests"): what the web pages file for an admin token's holder and an
/// admin approves with their own key, on the run's metadata backend.
struct ChangeRequestTests {
    /// A registry owned by alice (admin) with bob, a reader; alice's principal, as an admin token's holder is.
    private func registry() async throws -> (RegistryFixture, UnlockedIdentity, UnlockedIdentity, Principal) {
        let f = try await RegistryFixture()
        let alice = try person("alice")
        let bob = try person("bob")
        try await f.registry.addPrincipal(name: "alice", identity: alice.publicIdentity, roles: [], by: f.registrySigner)
        try await f.registry.addPrincipal(name: "bob", identity: bob.publicIdentity, roles: [.reader], by: Signer(alice))
        return (f, alice, bob, try await f.registry.principal(for: alice.identity))
    }

    @Test func aRequestedTokenOpensNothingUntilAnAdminApproves() async throws {
        let (f, alice, _, holder) = try await registry()
        let filed = try await f.registry.requestToken(principal: "bob", scope: .read, ttl: 3600, filedBy: holder, key: try f.registryKey)
        await expectRefusal("unknown bearer token") { _ = try await f.registry.authenticateToken(filed.token.text()) }

        let request = try ChangeRequest(text: filed.request.text)
        #expect(request.summary.hasPrefix("a read token ") && request.filedBy == "alice")
        try await f.registry.approve(request, by: Signer(alice))
        let opened = try await f.registry.authenticateToken(filed.token.text())
        #expect(opened.principal.name == "bob" && opened.scope == .read)
        // The record is alice's, as `token create` would have made it; replaying the ledger from the start accepts it.
        let record = try await f.reopen().ledgerState()
        #expect(record.tokens[opened.tokenID]?.facts.scope == .read)
        await expectRefusal("was approved already") { try await f.registry.approve(request, by: Signer(alice)) }
        let approvals = try await f.registry.auditEntries().filter { $0.action == "request.approve" }
        #expect(approvals.count == 1 && approvals[0].reason.contains("filed by alice"))
    }

    @Test func approvalChecksTheRequestAndTheApprover() async throws {
        let (f, alice, bob, holder) = try await registry()
        let filed = try await f.registry.requestToken(principal: "bob", scope: .read, ttl: 3600, filedBy: holder, key: try f.registryKey)
        let request = try ChangeRequest(text: filed.request.text)
        // Only admins file and approve.
        let bobHolder = try await f.registry.principal(for: bob.identity)
        await expectRefusal("bob lacks the admin role") {
            _ = try await f.registry.requestGrant(Grant(principal: "bob", role: .admin), revoking: false, filedBy: bobHolder, key: try f.registryKey)
        }
        await expectRefusal("bob lacks the admin role") { try await f.registry.approve(request, by: Signer(bob)) }
        // Expired, forged by another key, filed for another registry.
        await expectRefusal("the request expired") {
            try await f.registry.approve(request, by: Signer(alice), now: Date().addingTimeInterval(25 * 3600))
        }
        let state = try await f.registry.ledgerState()
        let forged = ChangeRequest.file(request.change, registry: state.registry, by: "alice", key: alice, now: Date())
        await expectRefusal("not signed by this registry's current key") { try await f.registry.approve(forged, by: Signer(alice)) }
        let (g, _, _, otherHolder) = try await registry()
        let elsewhere = try await g.registry.requestToken(principal: "bob", scope: .read, ttl: 3600, filedBy: otherHolder, key: try g.registryKey)
        await expectRefusal("was filed for registry") {
            try await f.registry.approve(try ChangeRequest(text: elsewhere.request.text), by: Signer(alice))
        }
        // What the request asks is judged again at approval: bob lost the role the read scope needs.
        try await f.registry.revoke(Grant(principal: "bob", role: .reader), by: Signer(alice))
        await expectRefusal("bob holds no role the read scope allows") { try await f.registry.approve(request, by: Signer(alice)) }
        await expectRefusal("unknown bearer token") { _ = try await f.registry.authenticateToken(filed.token.text()) }
    }

    @Test(arguments: [
        ("", "expected cfr1."), ("cfr1.", "its envelope does not parse"), ("cfr1.!!!", "expected cfr1."),
        ("cfr1.eyJ9", "its envelope does not parse"),
    ])
    func aMalformedRequestIsRefusedInOneLine(text: String, fragment: String) async throws {
        await expectRefusal(fragment) { _ = try ChangeRequest(text: text) }
    }

    @Test func anEditedRequestDoesNotVerify() async throws {
        let (f, alice, _, holder) = try await registry()
        let filed = try await f.registry.requestGrant(
            Grant(principal: "bob", role: .reader, scope: "m"),
            revoking: false,
            filedBy: holder,
            key: try f.registryKey
        )
        // The payload says bob reader on m; an edit to admin on * keeps the envelope's shape but not its signature.
        let envelope = try DSSEEnvelope(jsonBytes: ChangeRequest.base64urlDecoded(filed.text.dropFirst(5))!)
        let payload = String(decoding: try envelope.payloadBytes(), as: UTF8.self)
            .replacingOccurrences(of: "\"role\":\"reader\"", with: "\"role\":\"admin\"")
        var edited = envelope
        edited.payload = Data(payload.utf8).base64EncodedString()
        let text = "cfr1." + ChangeRequest.base64url(edited.jsonBytes)
        let parsed = try ChangeRequest(text: text)
        #expect(parsed.summary.contains("admin"))
        await expectRefusal("not signed by this registry's current key") { try await f.registry.approve(parsed, by: Signer(alice)) }
        #expect(try await f.registry.grants(of: "bob").map(\.role) == [.reader])
    }

    /// helper-40: ISO8601DateFormatter ignores what follows a time, so a request's `filed_at` could carry a terminal's
    /// control sequences to the approver's prompt (a server holding the registry key signs what it likes).
    @Test func aTimeWithAnythingAfterItIsRefused() async throws {
        let (f, _, _, holder) = try await registry()
        let filed = try await f.registry.requestToken(principal: "bob", scope: .read, ttl: 3600, filedBy: holder, key: try f.registryKey)
        let envelope = try DSSEEnvelope(jsonBytes: ChangeRequest.base64urlDecoded(filed.request.text.dropFirst(5))!)
        var object = try #require(try JSONSerialization.jsonObject(with: Data(try envelope.payloadBytes())) as? [String: Any])
        let filedAt = try #require(object["filed_at"] as? String)
        for tail in ["\r\u{1B}[2K\u{1B}[1Agrant bob read on m", "\u{1B}]0;x\u{07}", " later"] {
            object["filed_at"] = filedAt + tail
            var edited = envelope
            edited.payload = try JSONSerialization.data(withJSONObject: object).base64EncodedString()
            await expectRefusal("filed_at and expires are not two times") {
                _ = try ChangeRequest(text: "cfr1." + ChangeRequest.base64url(edited.jsonBytes))
            }
        }
        #expect(Registry.date(filedAt) != nil && Registry.date("2026-11-27T12:00:00+01:00") != nil)
    }

    @Test func grantAndRevokeRequestsChangeGrantsOnlyWhenApproved() async throws {
        let (f, alice, _, holder) = try await registry()
        let limited = Grant(principal: "bob", role: .inference, scope: "m/", alias: "prod", maxPredictions: 100)
        let grant = try await f.registry.requestGrant(limited, revoking: false, filedBy: holder, key: try f.registryKey)
        #expect(try await f.registry.grants(of: "bob").count == 1)
        try await f.registry.approve(try ChangeRequest(text: grant.text), by: Signer(alice))
        #expect(try await f.registry.grants(of: "bob").contains(limited))

        // A revocation names the grant as held, limits included, whatever the form sent.
        let unlimited = Grant(principal: "bob", role: .inference, scope: "m/", alias: "prod")
        let revoke = try await f.registry.requestGrant(unlimited, revoking: true, filedBy: holder, key: try f.registryKey)
        #expect(revoke.summary.contains("at most 100 predictions"))
        try await f.registry.approve(try ChangeRequest(text: revoke.text), by: Signer(alice))
        #expect(try await f.registry.grants(of: "bob").map(\.role) == [.reader])
        await expectRefusal("bob holds no inference on m/") {
            _ = try await f.registry.requestGrant(unlimited, revoking: true, filedBy: holder, key: try f.registryKey)
        }
        await expectRefusal("was approved already") { try await f.registry.approve(try ChangeRequest(text: revoke.text), by: Signer(alice)) }
        await expectRefusal("limits apply to inference grants only") {
            _ = try await f.registry.requestGrant(
                Grant(principal: "bob", role: .reader, maxPredictions: 5),
                revoking: false,
                filedBy: holder,
                key: try f.registryKey
            )
        }
    }

    /// Revoking a token only takes power away: the server's key may record it for an admin (the pages do it at once),
    /// or for the token's own principal, never for anybody else.
    @Test func theServersKeyRevokesATokenForAnAdminOrItsOwner() async throws {
        let (f, alice, bob, holder) = try await registry()
        let carol = try person("carol")
        try await f.registry.addPrincipal(name: "carol", identity: carol.publicIdentity, roles: [.reader], by: Signer(alice))
        let key = try f.registryKey
        let first = try await f.registry.createToken(principal: "bob", scope: .read, ttl: 600, by: Signer(alice))
        let second = try await f.registry.createToken(principal: "bob", scope: .read, ttl: 600, by: Signer(alice))
        let carolHolder = try await f.registry.principal(for: carol.identity)
        await expectRefusal("carol lacks the admin role") {
            try await f.registry.revokeToken(id: first.info.id, by: .registry(key, for: carolHolder))
        }
        try await f.registry.revokeToken(id: first.info.id, by: .registry(key, for: holder))
        try await f.registry.revokeToken(id: second.info.id, by: .registry(key, for: try await f.registry.principal(for: bob.identity)))
        await expectRefusal("was revoked") { _ = try await f.registry.authenticateToken(first.token.text()) }
        await expectRefusal("was revoked") { _ = try await f.registry.authenticateToken(second.token.text()) }
        // Minting stays an admin's own act.
        await expectRefusal("only alice's own key can") {
            _ = try await f.registry.createToken(principal: "bob", scope: .read, ttl: 600, by: .registry(key, for: holder))
        }
        #expect(try await f.reopen().fsck().problems.isEmpty)
    }

    /// The outside review's F3: approve took whatever the signed text stated. A filed_by with a terminal's control
    /// sequence (which could rewrite the line approve prints) and a token living past a year are refused at parsing.
    @Test func aRequestStatingWhatNoPageWouldAskIsRefusedBeforeAnythingIsShown() async throws {
        let (f, _, _, _) = try await registry()
        let state = try await f.registry.ledgerState()
        let facts = LedgerChange.TokenFacts(
            id: "00112233aabbccdd",
            principal: "bob",
            scope: .read,
            expires: "9999-12-31T23:59:59.999Z",
            hash: String(repeating: "ab", count: 32)
        )
        let key = try f.registryKey
        let longLived = ChangeRequest.file(.tokenCreate(facts), registry: state.registry, by: "alice", key: key, now: Date())
        await expectRefusal("living at most 365 days") { _ = try ChangeRequest(text: longLived.text) }
        var shortLived = facts
        shortLived.expires = Registry.timestamp(Date().addingTimeInterval(3600))
        let spoof = "alice\r\u{1b}[2Ka read token 1 for bob"
        let spoofed = ChangeRequest.file(.tokenCreate(shortLived), registry: state.registry, by: spoof, key: key, now: Date())
        await expectRefusal("filed_by is not a principal's name") { _ = try ChangeRequest(text: spoofed.text) }
        let hostileGrant = Grant(principal: "bob", role: .reader, scope: "m", alias: "prod\u{1b}[2K")
        let hostile = ChangeRequest.file(.grant(hostileGrant), registry: state.registry, by: "alice", key: key, now: Date())
        await expectRefusal("no principal, scope or alias") { _ = try ChangeRequest(text: hostile.text) }
        let fine = ChangeRequest.file(.tokenCreate(shortLived), registry: state.registry, by: "alice", key: key, now: Date())
        #expect(try ChangeRequest(text: fine.text).summary.contains("for bob"))
    }

    /// The outside review's F4: a request speaks for its filer only while they are an admin, and is approved once.
    @Test func aRequestDiesWithItsFilersAuthorityAndIsApprovedOnce() async throws {
        let (f, alice, _, holder) = try await registry()
        let carol = try person("carol")
        try await f.registry.addPrincipal(name: "carol", identity: carol.publicIdentity, roles: [.admin], by: Signer(alice))
        let carolHolder = try await f.registry.principal(for: carol.identity)
        let filed = try await f.registry.requestToken(principal: "bob", scope: .read, ttl: 3600, filedBy: carolHolder, key: try f.registryKey)
        try await f.registry.removePrincipal("carol", by: Signer(alice))
        await expectRefusal("filed by carol, who is no longer an admin") {
            try await f.registry.approve(try ChangeRequest(text: filed.request.text), by: Signer(alice))
        }
        await expectRefusal("unknown bearer token") { _ = try await f.registry.authenticateToken(filed.token.text()) }
        // A grant approved, then revoked, does not come back from the same request.
        let grant = try await f.registry.requestGrant(
            Grant(principal: "bob", role: .publisher, scope: "m"),
            revoking: false,
            filedBy: holder,
            key: try f.registryKey
        )
        try await f.registry.approve(try ChangeRequest(text: grant.text), by: Signer(alice))
        try await f.registry.revoke(Grant(principal: "bob", role: .publisher, scope: "m"), by: Signer(alice))
        await expectRefusal("was approved already") { try await f.registry.approve(try ChangeRequest(text: grant.text), by: Signer(alice)) }
        #expect(!(try await f.registry.grants(of: "bob").contains { $0.role == .publisher }))
    }
}
