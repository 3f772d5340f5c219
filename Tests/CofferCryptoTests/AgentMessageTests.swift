import Testing

@testable import CofferCrypto

/// The agent protocol's parsers on hand-built bodies (docs/FORMAT.md, "Agent socket protocol"): every request and
/// answer type, and each way a body can be malformed.
struct AgentMessageTests {
    private func request(_ body: [UInt8]) throws -> AgentRequest {
        try body.withUnsafeBytes { try AgentRequest(parsing: $0) }
    }

    private func response(_ body: [UInt8]) throws -> AgentResponse {
        try body.withUnsafeBytes { try AgentResponse(parsing: $0) }
    }

    private func u16(_ n: Int) -> [UInt8] { [UInt8(n & 0xFF), UInt8(n >> 8)] }
    private func u32(_ n: Int) -> [UInt8] { [UInt8(n & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n >> 16 & 0xFF), UInt8(n >> 24 & 0xFF)] }
    private let keyID = [UInt8](0..<16)

    @Test func everyRequestTypeParses() throws {
        #expect(try request([0x01]) == .list)
        let add = [0x02] + u16(5) + Array("alice".utf8) + [UInt8](repeating: 9, count: 96) + [0x10, 0x0E, 0, 0, 0, 0, 0, 0]
        #expect(try request(add) == .add(name: "alice", secrets: 8..<104, ttl: 3600))
        #expect(try request([0x03] + keyID) == .remove(keyID: keyID))
        #expect(try request([0x04]) == .removeAll)
        #expect(try request([0x05] + keyID + u32(3) + [1, 2, 3]) == .signEd25519(keyID: keyID, message: [1, 2, 3]))
        #expect(try request([0x06] + keyID + u32(0)) == .signP256(keyID: keyID, message: []))
        #expect(try request([0x07] + keyID + u32(2) + [7, 7]) == .unwrap(keyID: keyID, stanza: [7, 7]))
        #expect(try request([0x08] + u32(3) + Array("abc".utf8)) == .lock(passphrase: 5..<8))
        #expect(try request([0x09] + u32(1) + [0x61]) == .unlock(passphrase: 5..<6))
        #expect(try request([0x0A]) == .stop)
    }

    @Test(
        arguments: [
            ([], "truncated"),
            ([0x00], "unknown request type 0"),
            ([0x80], "unknown request type 128"),
            ([0x01, 0x00], "trailing bytes"),
            ([0x03, 1, 2, 3], "truncated"),
            ([0x02, 0x03, 0x00, 0x2F, 0x2E, 0x2E], "invalid identity name"),
            ([0x02, 0x02, 0x00, 0xC3, 0x28], "not UTF-8"),
            ([0x05] + [UInt8](0..<16) + [0xFF, 0xFF, 0xFF, 0xFF], "truncated"),
            ([0x08, 0, 0, 0, 0], "a passphrase must be 1 to 4096 bytes"),
            ([0x09, 0x01, 0x10, 0, 0] + [UInt8](repeating: 0x61, count: 4097), "a passphrase must be 1 to 4096 bytes"),
        ] as [([UInt8], String)]
    )
    func malformedRequestsAreRefusedWithTheReason(body: [UInt8], reason: String) {
        let failure = #expect(throws: AgentFailure.self) { _ = try request(body) }
        #expect(failure?.code == .malformed)
        #expect(failure?.message.contains(reason) == true, "\(String(describing: failure))")
        #expect(failure?.closesConnection == true)
    }

    @Test func everyAnswerTypeParses() throws {
        let alice = try Identity.generate(name: "alice").publicIdentity
        #expect(try response([0x80]) == .ok)
        let listing = [0x81] + u16(1) + u16(5) + Array("alice".utf8) + alice.ed25519 + alice.x25519 + alice.p256 + [1, 0, 0, 0, 0, 0, 0, 0]
        #expect(try response(listing) == .identities([AgentListing(identity: alice, expires: 1)]))
        #expect(try response([0x81, 0, 0]) == .identities([]))
        #expect(try response([0x82] + u32(2) + [5, 6]) == .signature([5, 6]))
        #expect(try response([0x83] + [UInt8](repeating: 1, count: 32)) == .dataKey(key: 1..<33))
        #expect(try response([0xFF, 2] + u16(2) + Array("no".utf8)) == .failure(AgentFailure(.unknownIdentity, "no")))
        // A code this version does not know keeps its number, for the message.
        guard case .failure(let unknown) = try response([0xFF, 77] + u16(1) + [0x78]) else {
            Issue.record("an error answer")
            return
        }
        #expect(unknown.code == .unknown && unknown.rawCode == 77)
        #expect(AgentConnection.error(unknown).description == "agent: the agent refused (code 77): x")
    }

    @Test func malformedAnswersAreRefused() {
        let bad: [[UInt8]] = [
            [0x81, 1, 0],  // one identity announced, none there
            [0x81, 1, 0, 1, 0, 0x61] + [UInt8](repeating: 0, count: 32 + 32 + 65 + 8),  // P-256 key without its 04 prefix
            [0x83] + [UInt8](repeating: 1, count: 31),
            [0x80, 0],
            [0x42],
        ]
        for body in bad {
            #expect(throws: AgentFailure.self) { _ = try response(body) }
        }
    }

    @Test func agentErrorsBecomeTheErrorsAnInProcessKeyWouldGive() {
        #expect(AgentConnection.error(AgentFailure(.notARecipient, "x")) == .notARecipient)
        #expect(AgentConnection.error(AgentFailure(.unwrapFailed, "the sealed box does not open")) == .unwrapFailed("the sealed box does not open"))
        #expect(
            AgentConnection.error(AgentFailure(.wrongPassphrase, "wrong passphrase: the agent stays locked"))
                == .agent("wrong passphrase: the agent stays locked")
        )
        #expect(AgentConnection.error(AgentFailure(.locked, "the agent is locked")).description == "agent: the agent is locked")
    }

    @Test func connectingWhereNoAgentListensSaysSo() {
        #expect(throws: CofferCryptoError.agent("no agent at /nonexistent/coffer-agent/agent.sock (No such file or directory)")) {
            _ = try AgentConnection(path: "/nonexistent/coffer-agent/agent.sock")
        }
        let long = "/tmp/" + String(repeating: "d", count: 120) + "/agent.sock"
        #expect(throws: CofferCryptoError.agent("socket path \(long) is too long")) { _ = try AgentConnection(path: long) }
    }
}
