import Foundation
import Testing

@testable import CofferCrypto

/// A pipeline that hashes runs its workers below its other lanes (nice 5): the hash is one serial pass that the workers'
/// shared work must not slow. Read from /proc while the pipeline's writer lane runs the sink; each lane's thread carries
/// its name for the kernel.
struct PipelinePriorityTests {
    /// Sees, from the writer lane, its own nice value and how many of the process's pipeline workers run 5 below it.
    private final class Observer: ByteSink {
        var writer: Int?
        var lowered = 0
        var name: String?
        var writes = 0
        func write(_ bytes: UnsafeRawBufferPointer) throws(CofferCryptoError) {
            // The first write is the header's, on the calling thread; the batches follow on the writer lane.
            writes += 1
            guard writes == 2 else { return }
            writer = Self.nice(stat: "/proc/thread-self/stat")
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
            name = try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)
            // Other tests' pipelines may run meanwhile (with workers at 5, or at 0 if they hash nothing): at least this
            // one's workers are at 5.
            lowered =
                tasks.filter { task in
                    let name = (try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8)) ?? ""
                    return name.hasPrefix("coffer-worker") && Self.nice(stat: "/proc/self/task/\(task)/stat") == writer.map { min($0 + 5, 19) }
                }.count
        }

        /// Field 19 of a thread's `stat` file, counted after its command name (which may hold spaces) in parentheses.
        static func nice(stat path: String) -> Int? {
            guard let stat = try? String(contentsOfFile: path, encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return nil }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 16 ? Int(fields[16]) : nil
        }
    }

    @Test func aPipelineThatHashesRunsItsWorkersBelowItsOtherLanes() throws {
        let observer = Observer()
        // Three batches or more (a batch is at least 1 MiB, and two 64 KiB chunks per core): an input of one batch is
        // transformed inline, on the caller's thread.
        let input = testBytes(3 * max(1 << 20, 2 * ProcessInfoCores.count * SealedFile.defaultChunkSize) + 1)
        _ = try SealedFile.seal(from: MemorySource(input), to: observer, dataKey: SecretKey.random(), stanzas: [], digests: true)
        #expect(observer.name == "coffer-write\n", "the sink runs on the writer lane, named for the kernel")
        // Relative to the test's own thread: a CI job may run under nice, and libdispatch sets nice values by QoS.
        #expect(observer.writer == Observer.nice(stat: "/proc/thread-self/stat"), "the writer lane keeps its creator's priority")
        #expect(observer.lowered >= ProcessInfoCores.count, "\(observer.lowered) workers 5 below the writer lane")
    }
}
