import CofferCrypto
import Foundation
import Testing

@testable import CofferRegistry

/// Keyset pages of the audit log on both metadata engines (the web audit page reads them).
struct AuditPageTests {
    @Test(arguments: MetadataBackend.available) func pagesWalkTheLogNewestFirstWithoutGapsOrRepeats(on backend: MetadataBackend) async throws {
        let f = try await RegistryFixture(backend)
        let registry = f.registry
        for i in 1...75 {
            try await registry.recordRefusal(
                action: i % 3 == 0 ? "pull" : "probe",
                target: i % 2 == 0 ? "m/a:1" : "n/b:1",
                reason: "r\(i)",
                principal: "p\(i % 2)"
            )
        }
        let everything = try await registry.auditEntries().filter { $0.principal == "p1" && $0.action == "probe" }
        let filter = try AuditFilter(principal: "p1", action: "probe")
        var seen: [AuditEntry] = []
        var before: Int64? = nil
        var pages = 0
        repeat {
            let page = try await registry.auditPage(filter, before: before, limit: 7)
            #expect(page.entries.count <= 7)
            seen += page.entries
            before = page.next
            pages += 1
        } while before != nil && pages < 100
        #expect(seen == everything.reversed(), "the pages, joined, are every matching entry, newest first")
        #expect(pages == (everything.count + 6) / 7)

        // The model filter (applied after the store's) and a namespace.
        let model = try await registry.auditPage(try AuditFilter(action: "probe", model: "m/a"), limit: 1000)
        #expect(!model.entries.isEmpty && model.entries.allSatisfy { $0.target == "m/a:1" && $0.action == "probe" } && model.next == nil)
        let namespace = try await registry.auditPage(try AuditFilter(model: "n/"), limit: 5)
        #expect(
            namespace.entries.count == 5 && namespace.entries.allSatisfy { $0.target.hasPrefix("n/") }
                && namespace.next == namespace.entries.last?.seq
        )
        // `since` ends the scan at the first older entry.
        let future = try await registry.auditPage(try AuditFilter(since: "2999-01-01T00:00:00Z"), limit: 10)
        #expect(future.entries.isEmpty && future.next == nil)
        await #expect(throws: CofferRegistryError.self) { _ = try await registry.auditPage(AuditFilter(), limit: 0) }
        #expect(try await registry.lastSignedAuditHead() == nil)
        let signed = try await registry.signAuditHead(with: try f.registryKey)
        let head = try #require(try await registry.lastSignedAuditHead())
        #expect(head.seq == signed && head.keyID != nil)
    }
}
