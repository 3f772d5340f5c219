import Foundation
import Synchronization
import Testing

@testable import CofferCrypto

struct SecureMemoryTests {
    /// A large buffer is zeroed, holds what is written over its whole length, sits between inaccessible pages,
    /// and is locked in memory (checked as root, who may lock any amount).
    @Test func largeBuffersAreZeroedGuardedAndLocked() throws {
        let count = SecureBytes.largeSize + 12_345
        let buffer = SecureBytes(count: count)
        let start = buffer.withUnsafeBytes { Int(bitPattern: $0.baseAddress!) }
        #expect(buffer.withUnsafeBytes { bytes in bytes.allSatisfy { $0 == 0 } })
        let pattern = testBytes(count, seed: 3)
        buffer.withUnsafeMutableBytes { $0.copyBytes(from: pattern) }
        #expect(buffer.withUnsafeBytes { Array($0) } == pattern)

        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let before = try #require(try Self.mapping(containing: start - 1))
        let after = try #require(try Self.mapping(containing: start + (count + page - 1) / page * page))
        #expect(before.permissions.hasPrefix("---"), "the page before the buffer is inaccessible")
        #expect(after.permissions.hasPrefix("---"), "the page after the buffer is inaccessible")
        // Root may lock any amount; other users only their RLIMIT_MEMLOCK (often 8 MiB), and then it is not locked.
        if geteuid() == 0 {
            let lockedKiB = try Self.lockedKiB(from: start, through: start + count - 1)
            #expect(lockedKiB * 1024 >= count, "locked: \(lockedKiB) KiB of \(count / 1024)")
        }
    }

    /// Opening into a region of memory writes the plaintext in place, across batches, and refuses to run past it.
    @Test func openingIntoARegionWritesInPlaceAndStopsAtItsEnd() throws {
        let alice = try Identity.generate(name: "alice")
        let plaintext = testBytes(5 << 20 + 3)
        let sealed = try Fixtures.seal(plaintext, to: [alice.publicIdentity])
        let buffer = SecureBytes(count: plaintext.count)
        try buffer.withUnsafeMutableBytes { region in
            let sink = MemoryRegionSink(region)
            let opened = try SealedFile.open(from: MemorySource(sealed), to: sink, identity: alice, digests: true)
            #expect(opened.plaintextSHA256 == Digest.sha256(plaintext))
            #expect(sink.written == plaintext.count)
        }
        #expect(buffer.withUnsafeBytes { Array($0) } == plaintext)

        let short = SecureBytes(count: plaintext.count - 1)
        let error = #expect(throws: CofferCryptoError.self) {
            try short.withUnsafeMutableBytes { region in
                _ = try SealedFile.open(from: MemorySource(sealed), to: MemoryRegionSink(region), identity: alice)
            }
        }
        #expect(error?.description == "malformed sealed file: the output runs past the \(plaintext.count - 1) bytes expected")
    }

    /// A small secret's slot is wiped when the secret is dropped (the slot stays mapped for the next one, so its bytes
    /// can be read while it is free), and is locked in memory like any sodium_malloc region.
    @Test func aSmallSecretsSlotIsWipedWhenDroppedAndLocked() throws {
        for count in [0, 1, 31, 32, 33, 700, SecureSlab.largestSlot] {
            let sizeClass = try #require(SecureSlab.sizeClass(for: count))
            // Another test's thread may take the slot as soon as it is free; then try with another.
            var freed: [UInt8]?
            for _ in 0..<100 where freed == nil {
                let address: Int
                do {
                    let secret = SecureBytes(count: count)
                    #expect(secret.withUnsafeBytes { $0.allSatisfy { $0 == 0 } }, "a new secret of \(count) bytes is zeroed")
                    secret.withUnsafeMutableBytes { $0.initializeMemory(as: UInt8.self, repeating: 0xA5) }
                    address = secret.withUnsafeBytes { Int(bitPattern: $0.baseAddress!) }
                    if geteuid() == 0 {
                        #expect(try Self.lockedKiB(from: address, through: address + max(count, 1) - 1) > 0, "a slot of \(count) bytes is locked")
                    }
                }
                freed = SecureSlab.bytesIfFree(UnsafeRawPointer(bitPattern: address)!, sizeClass: sizeClass)
            }
            let bytes = try #require(freed, "the slot of a \(count)-byte secret was never seen free")
            #expect(bytes.allSatisfy { $0 == 0 }, "the slot of a dropped \(count)-byte secret still holds its bytes")
        }
    }

    /// Secrets of every size, taken and dropped on several threads at once, start zeroed and keep what each thread
    /// wrote until it drops them: no slot is handed to two secrets.
    @Test func secretsTakenOnManyThreadsAtOnceNeverShareMemory() {
        let sizes = [0, 1, 32, 100, 513, SecureSlab.largestSlot, SecureSlab.largestSlot + 1, 5000]
        let failures = Mutex(0)
        DispatchQueue.concurrentPerform(iterations: 4) { thread in
            for round in 0..<300 {
                let pattern = UInt8(truncatingIfNeeded: thread &* 31 &+ round &+ 1)
                for count in sizes {
                    let secret = SecureBytes(count: count)
                    var ok = secret.withUnsafeBytes { $0.allSatisfy { $0 == 0 } }
                    secret.withUnsafeMutableBytes { $0.initializeMemory(as: UInt8.self, repeating: pattern) }
                    let other = SecureBytes(count: count)
                    other.withUnsafeMutableBytes { $0.initializeMemory(as: UInt8.self, repeating: ~pattern) }
                    ok = ok && secret.withUnsafeBytes { $0.allSatisfy { $0 == pattern } }
                    ok = ok && other.withUnsafeBytes { $0.allSatisfy { $0 == ~pattern } }
                    if !ok { failures.withLock { $0 += 1 } }
                }
            }
        }
        #expect(failures.withLock { $0 } == 0)
    }

    /// The lines of /proc/self/smaps for each mapping: its range, permissions and fields.
    private static func mappings() throws -> [(range: Range<Int>, permissions: String, fields: [String: Int])] {
        var result: [(range: Range<Int>, permissions: String, fields: [String: Int])] = []
        // Read to the end: a /proc file reports a size of 0.
        let text = String(decoding: try FileHandle(forReadingFrom: URL(fileURLWithPath: "/proc/self/smaps")).readToEnd() ?? Data(), as: UTF8.self)
        for line in text.split(separator: "\n") {
            let words = line.split(separator: " ", omittingEmptySubsequences: true)
            if let first = words.first, !first.hasSuffix(":") {
                // [vsyscall] lies above Int.max: its bounds do not parse, and no buffer is there.
                let bounds = first.split(separator: "-").compactMap { Int($0, radix: 16) }
                result.append((bounds.count == 2 ? bounds[0]..<bounds[1] : 0..<0, String(words[1]), [:]))
            } else if words.count >= 2, words[0].hasSuffix(":"), let value = Int(words[1]), !result.isEmpty {
                result[result.count - 1].fields[String(words[0].dropLast())] = value
            }
        }
        return result
    }

    private static func mapping(containing address: Int) throws -> (permissions: String, fields: [String: Int])? {
        try mappings().first { $0.range.contains(address) }.map { ($0.permissions, $0.fields) }
    }

    /// The locked KiB of the mappings that overlap `first...last` (mprotect and huge pages may split a buffer's).
    private static func lockedKiB(from first: Int, through last: Int) throws -> Int {
        try mappings().filter { $0.range.overlaps(first..<(last + 1)) }.reduce(0) { $0 + ($1.fields["Locked"] ?? 0) }
    }
}
