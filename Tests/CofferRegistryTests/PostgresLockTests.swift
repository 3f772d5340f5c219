import Foundation
import PostgresNIO
import Testing

@testable import CofferRegistry

/// Advisory locks: the audit append serialized across writers, and one leader at a time for signing heads.
@Suite(.enabled(if: PostgresTestSupport.isAvailable, PostgresTestSupport.skipReason))
struct PostgresLockTests {
    /// Writers appending to one hash chain at once, each under pg_advisory_xact_lock: every entry links to the one
    /// before it, no seq is taken twice and none is skipped.
    @Test func transactionLocksSerializeAppendsToOneChain() async throws {
        let test = try await PostgresTestSupport.database()
        let writers = 4
        let perWriter = 15
        try await test.withDatabase { database in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<writers {
                    group.addTask {
                        for i in 0..<perWriter {
                            try await database.transaction { connection in
                                try await Self.append(writer: writer, index: i, on: connection)
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let rows = try await database.query("SELECT seq, prev_hash, entry_hash FROM audit_log ORDER BY seq")
            #expect(rows.count == writers * perWriter)
            var previous = [UInt8](repeating: 0, count: 32)
            for (index, row) in rows.enumerated() {
                let (seq, prev, entry) = try row.decode((Int64, ByteBuffer, ByteBuffer).self)
                #expect(seq == Int64(index + 1))
                #expect(Array(prev.readableBytesView) == previous, "entry \(seq) links to the entry before it")
                previous = Array(entry.readableBytesView)
            }
        }
    }

    /// One audit-like append: the lock, the end read, the next entry linked to it.
    static func append(writer: Int, index: Int, on connection: PostgresConnection) async throws {
        try await connection.advisoryTransactionLock(PostgresAdvisoryLock.auditAppend)
        // Read the end, then append after it: without the lock, two writers read the same end.
        var seq: Int64 = 0
        var previous = ByteBuffer(bytes: [UInt8](repeating: 0, count: 32))
        if let last = try await connection.rows("SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1").first {
            (seq, previous) = try last.decode((Int64, ByteBuffer).self)
        }
        let next = seq + 1
        // 32 bytes naming the entry (a real chain hashes; what is checked here is only the links).
        let hash = ByteBuffer(bytes: Array("\(next)|\(writer)|\(index)|".utf8) + [UInt8](repeating: 0, count: 32)).getSlice(at: 0, length: 32)!
        let principal = "w\(writer)"
        let target = String(index)
        try await connection.rows(
            "INSERT INTO audit_log VALUES (\(next), 'now', \(principal), 'test', \(target), 'ok', '', \(previous), \(hash))"
        )
    }

    @Test func tryTransactionLockDoesNotWait() async throws {
        let test = try await PostgresTestSupport.database()
        try await test.withDatabase { database in
            try await database.transaction { first in
                #expect(try await first.tryAdvisoryTransactionLock(PostgresAdvisoryLock.auditAppend))
                // Another session cannot have it while this transaction holds it.
                let taken = try await database.transaction { second in
                    try await second.tryAdvisoryTransactionLock(PostgresAdvisoryLock.auditAppend)
                }
                #expect(!taken)
            }
            // Released at COMMIT.
            let taken = try await database.transaction { connection in
                try await connection.tryAdvisoryTransactionLock(PostgresAdvisoryLock.auditAppend)
            }
            #expect(taken)
        }
    }

    /// Two replicas compete for leadership: the second gets the lock only once the first's connection has ended,
    /// whether the first released it or its session was killed (a crashed replica).
    @Test func leadershipPassesWhenTheHoldersConnectionEnds() async throws {
        let test = try await PostgresTestSupport.database()
        try await test.withDatabase { replicaA in
            try await test.withDatabase { replicaB in
                let key = PostgresAdvisoryLock.auditHeadSigner
                let leaderA = try #require(try await PostgresSessionLock.tryAcquire(key, on: replicaA))
                #expect(await leaderA.confirm())
                #expect(try await PostgresSessionLock.tryAcquire(key, on: replicaB) == nil, "one leader at a time")
                // Still A's after B tried, and still nobody else's a moment later.
                try await Task.sleep(for: .milliseconds(50))
                #expect(try await PostgresSessionLock.tryAcquire(key, on: replicaB) == nil)

                await leaderA.release()
                #expect(!leaderA.isHeld)
                // The server frees the lock once it has seen A's connection end: at once here, later on a loaded machine.
                var taken: PostgresSessionLock? = nil
                for _ in 0..<500 where taken == nil {
                    taken = try await PostgresSessionLock.tryAcquire(key, on: replicaB)
                    if taken == nil { try await Task.sleep(for: .milliseconds(20)) }
                }
                let leaderB = try #require(taken)
                #expect(await leaderB.confirm())
                #expect(try await PostgresSessionLock.tryAcquire(key, on: replicaA) == nil)

                // B's session is killed (its process died, its network went): the server releases the lock, B finds out,
                // and A takes over.
                let killed = try await replicaA.query(
                    """
                    SELECT pg_terminate_backend(pid) FROM pg_locks
                    WHERE locktype = 'advisory' AND granted AND ((classid::bigint << 32) | objid::bigint) = \(key)
                    """
                )
                #expect(killed.count == 1)
                await leaderB.lost()
                #expect(await !leaderB.confirm())
                var leaderAgain: PostgresSessionLock? = nil
                for _ in 0..<100 where leaderAgain == nil {
                    leaderAgain = try await PostgresSessionLock.tryAcquire(key, on: replicaA)
                    if leaderAgain == nil { try await Task.sleep(for: .milliseconds(20)) }
                }
                let leader = try #require(leaderAgain)
                #expect(await leader.confirm())
                await leader.release()
                await leaderB.release()
            }
        }
    }
}
