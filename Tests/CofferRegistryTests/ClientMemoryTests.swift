import CofferCrypto
import CofferTestSupport
import Foundation
import Testing

@testable import CofferRegistry

/// What the client remembers of a registry is kept in two copies written in turn, in place (docs/FORMAT.md, "Client
/// memory"): a copy torn by a power cut mid-write leaves the one written before it, as a rename did.
struct ClientMemoryTests {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("memory-\(UUID().uuidString)").path
    let root = "0123456789abcdef0123456789abcdef"

    /// What is remembered after the `n`th verification: the state head at ledger record `n`.
    func head(_ n: Int64, at: String = "2026-12-06T06:00:00Z") -> ClientMemory.Remembered {
        .init(state: LedgerState(registry: root), audit: nil, head: .init(at: at, ledgerSeq: n))
    }

    func copy(_ slot: Int) -> String { "\(directory)/registries/\(root).\(slot)" }

    func inode(_ path: String) -> UInt64? {
        var info = stat()
        return stat(path, &info) == 0 ? UInt64(info.st_ino) : nil
    }

    /// A test process keeps its client state in a folder of its own (Tests/TestState), whatever COFFER_STATE_DIR said:
    /// the tests of remote clients remember registries, and the user's own coffer commands would read them.
    @Test func theTestProcessKeepsItsClientStateApartFromTheUsers() {
        let users = StateDirectory.path(environment: ProcessInfo.processInfo.environment.filter { $0.key != "COFFER_STATE_DIR" })
        #expect(StateDirectory.path() == TestState.folder)
        #expect(TestState.folder != users && FileManager.default.fileExists(atPath: TestState.folder))
    }

    @Test func theTwoCopiesTakeTurnsInPlaceAndATornOneLeavesTheOther() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let memory = ClientMemory(directory: directory)
        #expect(try memory.remembered(root) == nil)
        for n in Int64(1)...3 {
            let next = head(n)
            try await memory.remember(root) { $0 = next }
        }
        #expect(try memory.remembered(root) == head(3))
        #expect(ClientMemory.readCopy(copy(0))?.generation == 3 && ClientMemory.readCopy(copy(1))?.generation == 2)
        let files = (inode(copy(0)), inode(copy(1)))

        // The newest copy cut short, or a byte of it changed, as a power cut during its write would leave it.
        let whole = try Data(contentsOf: URL(fileURLWithPath: copy(0)))
        var changed = whole
        changed[changed.count - 30] ^= 0x01
        for torn in [whole.prefix(whole.count - 9), changed] {
            try torn.write(to: URL(fileURLWithPath: copy(0)))
            #expect(ClientMemory.readCopy(copy(0)) == nil)
            #expect(try memory.remembered(root) == head(2))
        }
        // The next write goes over the torn copy, in place; a shorter one leaves the longer one's tail, ignored.
        let shorter = head(4, at: "t")
        try await memory.remember(root) { $0 = shorter }
        #expect(try memory.remembered(root) == shorter)
        #expect(ClientMemory.readCopy(copy(0))?.generation == 3)
        let next = head(5)
        try await memory.remember(root) { $0 = next }
        #expect(try memory.remembered(root) == next && ClientMemory.readCopy(copy(1))?.generation == 4)
        #expect((inode(copy(0)), inode(copy(1))) == files, "a copy's file was made again")

        // Nothing changed, nothing written.
        try await memory.remember(root) { _ in }
        #expect(ClientMemory.readCopy(copy(1))?.generation == 4 && ClientMemory.readCopy(copy(0))?.generation == 3)
    }

    /// What an older client wrote is read, merged into the next copy written, and then removed.
    @Test func whatAnOlderClientRememberedIsMergedIntoTheCopies() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let memory = ClientMemory(directory: directory)
        try FileManager.default.createDirectory(atPath: "\(directory)/registries", withIntermediateDirectories: true)
        let older = "\(directory)/registries/\(root).json"
        try JSONEncoder().encode(head(7)).write(to: URL(fileURLWithPath: older))
        #expect(try memory.remembered(root) == head(7))
        try await memory.remember(root) { $0?.head?.ledgerSeq += 1 }  // from what the older file holds
        #expect(try memory.remembered(root) == head(8))
        #expect(ClientMemory.readCopy(copy(0))?.generation == 1 && ClientMemory.readCopy(copy(1)) == nil)
        #expect(!FileManager.default.fileExists(atPath: older), "the older file outlived the copy that holds it")

        // A downgrade and an upgrade again: the older client went further on the ledger, with the marks it had kept from
        // before (helper-62: taking them too would have let an audit log cut back, or an older head, pass).
        var json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(head(5))) as! [String: Any]
        var state = json["state"] as! [String: Any]
        state["seq"] = 9
        json["state"] = state
        let further = try JSONDecoder().decode(ClientMemory.Remembered.self, from: JSONSerialization.data(withJSONObject: json))
        try JSONEncoder().encode(further).write(to: URL(fileURLWithPath: older))
        let merged = try memory.remembered(root)
        #expect(merged?.state == further.state && merged?.head == head(8).head)
        try await memory.remember(root) { $0?.head?.ledgerSeq = 10 }
        let updated = try memory.remembered(root)
        #expect(updated?.state.seq == 9 && updated?.head?.ledgerSeq == 10)
        #expect(ClientMemory.readCopy(copy(1))?.generation == 2 && !FileManager.default.fileExists(atPath: older))
    }

    /// A link or a folder in a copy's place is not read through nor written through: it is replaced.
    @Test func somethingElseInACopysPlaceIsReplaced() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let memory = ClientMemory(directory: directory)
        try await memory.remember(root) { $0 = head(1) }
        let elsewhere = "\(directory)/elsewhere"
        try FileManager.default.copyItem(atPath: copy(0), toPath: elsewhere)
        try FileManager.default.createSymbolicLink(atPath: copy(1), withDestinationPath: elsewhere)
        try FileManager.default.removeItem(atPath: copy(0))
        try FileManager.default.createDirectory(atPath: copy(0), withIntermediateDirectories: false)
        #expect(try memory.remembered(root) == nil, "a copy was read through a link")
        try await memory.remember(root) { $0 = head(2) }
        #expect(try memory.remembered(root) == head(2))
        #expect(ClientMemory.readCopy(elsewhere)?.remembered == head(1), "a copy was written through a link")
    }

    /// A copy at the last generation, or a folder with something in it in the slot to write: the update is refused in one
    /// line naming why, and what is remembered stays as it was.
    @Test func anUpdateThatCannotBeWrittenIsRefusedAndChangesNothing() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let memory = ClientMemory(directory: directory)
        try await memory.remember(root) { $0 = head(1) }
        let json = try ClientMemory.encoder().encode(head(2))
        let last = "\(ClientMemory.copyMagic) \(UInt64.max) \(json.count) \(Digest.hex(Digest.sha256(json)))\n"
        try (Data(last.utf8) + json).write(to: URL(fileURLWithPath: copy(1)))
        #expect(try memory.remembered(root) == head(2))
        await #expect(throws: CofferRegistryError.io(path: copy(0), reason: "cannot remember the registry's state: no generation left")) {
            try await memory.remember(root) { $0 = head(3) }
        }
        #expect(try memory.remembered(root) == head(2) && ClientMemory.readCopy(copy(0))?.generation == 1)

        try FileManager.default.removeItem(atPath: copy(0))
        try FileManager.default.removeItem(atPath: copy(1))
        try FileManager.default.createDirectory(atPath: "\(copy(0))/inside", withIntermediateDirectories: true)
        await #expect(
            throws: CofferRegistryError.io(
                path: copy(0),
                reason: "cannot remember the registry's state: cannot replace what is there: Directory not empty"
            )
        ) {
            try await memory.remember(root) { $0 = head(3) }
        }
        #expect(try memory.remembered(root) == nil && FileManager.default.fileExists(atPath: "\(copy(0))/inside"))
    }

    /// A valid copy that does not decode (written by another version of Coffer) is refused, not passed over for the
    /// older copy or for nothing, either of which would accept the registry rolled back (helper-76); nothing is written.
    @Test func aValidCopyThatDoesNotDecodeIsRefusedNotPassedOver() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let memory = ClientMemory(directory: directory)
        try await memory.remember(root) { $0 = head(1) }
        var json = try #require(try JSONSerialization.jsonObject(with: ClientMemory.encoder().encode(head(2))) as? [String: Any])
        json["head"] = ["at": 7, "ledger_seq": "two"]
        let body = try JSONSerialization.data(withJSONObject: json)
        try (Data("\(ClientMemory.copyMagic) 2 \(body.count) \(Digest.hex(Digest.sha256(body)))\n".utf8) + body)
            .write(to: URL(fileURLWithPath: copy(1)))
        let refusal = CofferRegistryError.io(
            path: copy(1),
            reason:
                "what this client remembers of the registry does not decode (written by another version of Coffer?): use that version, or remove registries/\(root).0 and .1 to trust the registry anew, forgetting what was verified"
        )
        #expect(throws: refusal) { try memory.remembered(root) }
        await #expect(throws: refusal) { try await memory.remember(root) { $0 = head(3) } }
        #expect(ClientMemory.readCopy(copy(0))?.remembered == head(1), "nothing was written")
    }
}
