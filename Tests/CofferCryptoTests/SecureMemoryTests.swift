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

    /// Reserving a span of a region faults its pages in before anything is written there (on the pipeline's reading
    /// thread, one batch ahead of the workers), exactly the pages it spans, and a large buffer still locks each page as
    /// it comes in.
    @Test func reservingARegionFaultsItsPagesInLocked() throws {
        guard Self.kernelPrefaults else { return }  // before Linux 5.14 the writers fault the pages in, as before
        // The spans lie past the buffer's last whole 2 MiB block (it starts on one), where no transparent huge page
        // can bring in more than a span asks for, whatever the system's setting.
        let buffer = SecureBytes(count: SecureBytes.largeSize + 3 << 19)
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        try buffer.withUnsafeMutableBytes { region in
            let sink = MemoryRegionSink(region)
            let start = SecureBytes.largeSize + 12_345
            _ = try sink.reserve(start)
            let base = Int(bitPattern: region.baseAddress!)
            // A span that starts and ends inside pages: every page it touches must come in, and no other. Its first
            // page, which it shares with the span reserved before, is already in.
            let first = (base + start) / page * page
            let last = (base + start + (1 << 20) - 1) / page * page
            #expect(Self.residentPages(from: first, through: first) == 1)
            #expect(Self.residentPages(from: first + page, through: last + page) == 0, "a fresh mapping's pages are not in memory yet")
            _ = try sink.reserve(1 << 20)
            #expect(Self.residentPages(from: first, through: last) == (last - first) / page + 1)
            #expect(Self.residentPages(from: last + page, through: last + page) == 0, "the page after the span stays out")
            if geteuid() == 0 {
                #expect(try Self.lockedKiB(from: first, through: last + page - 1) * 1024 >= last + page - first)
            }
        }
    }

    /// Whether this kernel populates pages on request (MADV_POPULATE_WRITE, Linux 5.14; EINVAL before it).
    private static let kernelPrefaults: Bool = {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        guard let probe = mmap(nil, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), probe != MAP_FAILED else { return false }
        defer { munmap(probe, page) }
        return madvise(probe, page, 23) == 0  // MADV_POPULATE_WRITE
    }()

    /// How many of the pages from `first` through `last` (page addresses) are in memory (mincore).
    private static func residentPages(from first: Int, through last: Int) -> Int {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        var vector = [UInt8](repeating: 0, count: (last - first) / page + 1)
        #expect(mincore(UnsafeMutableRawPointer(bitPattern: first), last + page - first, &vector) == 0)
        return vector.filter { $0 & 1 == 1 }.count
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

    /// A small secret's whole slot, not just the bytes it used, is wiped when the secret is dropped (the slot stays
    /// mapped for the next one, so its bytes can be read while it is free), and it lies in locked memory.
    @Test func aSmallSecretsWholeSlotIsWipedWhenDroppedAndLocked() throws {
        for count in [0, 1, 31, 32, 33, 700, SecureSlab.largestSlot] {
            let sizeClass = try #require(SecureSlab.sizeClass(for: count))
            let size = SecureSlab.slotSizes[sizeClass]
            // Held so that the chunk of the slot under test keeps a taken slot and is not given back when it is dropped.
            let neighbour = SecureBytes(count: count)
            // Another test's thread may take the slot as soon as it is free; then try with another.
            var wiped: Bool?
            for _ in 0..<100 where wiped == nil {
                let address: Int
                do {
                    let secret = SecureBytes(count: count)
                    #expect(secret.withUnsafeBytes { $0.allSatisfy { $0 == 0 } }, "a new secret of \(count) bytes is zeroed")
                    address = secret.withUnsafeBytes { Int(bitPattern: $0.baseAddress!) }
                    // The slot's bytes past the secret's count too, as a caller with a pointer could write them.
                    UnsafeMutableRawPointer(bitPattern: address)!.initializeMemory(as: UInt8.self, repeating: 0xA5, count: size)
                    if geteuid() == 0 {
                        #expect(try Self.lockedKiB(from: address, through: address + size - 1) > 0, "the chunk of a \(count)-byte slot is locked")
                    }
                }
                _ = SecureSlab.withSlotIfFree(UnsafeRawPointer(bitPattern: address)!, sizeClass: sizeClass) { slot in
                    wiped = slot.allSatisfy { $0 == 0 }
                }
            }
            _ = neighbour
            let result = try #require(wiped, "the slot of a \(count)-byte secret was never seen free")
            #expect(result, "the slot of a dropped \(count)-byte secret still holds bytes")
        }
    }

    /// A slot is zeroed when it is taken, not only when it is given back: bytes written into a free slot (by a stray
    /// pointer) never reach the next secret.
    @Test func aSecretTakingASlotWrittenWhileFreeStartsZeroed() throws {
        let count = 100
        let sizeClass = try #require(SecureSlab.sizeClass(for: count))
        let neighbour = SecureBytes(count: count)
        var checked = false
        for _ in 0..<100 where !checked {
            let address = SecureBytes(count: count).withUnsafeBytes { Int(bitPattern: $0.baseAddress!) }
            let dirtied = SecureSlab.withSlotIfFree(UnsafeRawPointer(bitPattern: address)!, sizeClass: sizeClass) { slot in
                slot.initializeMemory(as: UInt8.self, repeating: 0x5A)
            }
            // The slot given back last is taken first, unless another test's thread took it in between.
            let next = SecureBytes(count: count)
            if dirtied, next.withUnsafeBytes({ Int(bitPattern: $0.baseAddress!) }) == address {
                #expect(next.withUnsafeBytes { $0.allSatisfy { $0 == 0 } })
                checked = true
            }
        }
        _ = neighbour
        #expect(checked, "never took again a slot written while free")
    }

    /// A write one byte past either end of a small secret's slot lands on a canary, and dropping the secret stops the
    /// process (as sodium_free does when its canary is overwritten) rather than let the slot be handed out again.
    @Test func aWritePastASlotIsCaughtWhenTheSecretIsDropped() async {
        await #expect(processExitsWith: .failure) {
            let secret = SecureBytes(count: 40)
            secret.withUnsafeMutableBytes { bytes in
                let past = bytes.baseAddress! + SecureSlab.slotSizes[SecureSlab.sizeClass(for: 40)!]
                past.storeBytes(of: ~past.load(as: UInt8.self), as: UInt8.self)
            }
        }
        await #expect(processExitsWith: .failure) {
            let secret = SecureBytes(count: 40)
            secret.withUnsafeMutableBytes { bytes in
                let before = bytes.baseAddress! - 1
                before.storeBytes(of: ~before.load(as: UInt8.self), as: UInt8.self)
            }
        }
    }

    /// Chunks of slots are given back to sodium_free when all their slots are free, so locked memory follows the
    /// secrets held now, not the most ever held.
    @Test func chunksWhoseSlotsAreAllFreeAreGivenBack() throws {
        let sizeClass = 4
        let count = SecureSlab.slotSizes[sizeClass]
        let before = SecureSlab.chunkCount(sizeClass: sizeClass)
        var held: [Held] = []
        for _ in 0..<(5 * SecureSlab.slotsPerChunk(sizeClass: sizeClass)) { held.append(Held(SecureBytes(count: count))) }
        let peak = SecureSlab.chunkCount(sizeClass: sizeClass)
        #expect(peak >= before + 4)
        held.removeAll()
        // Other tests' threads may hold a slot or two of this size meanwhile, in chunks this test made.
        let after = SecureSlab.chunkCount(sizeClass: sizeClass)
        #expect(after <= before + 2, "chunks: \(before) before, \(peak) at the peak, \(after) after")
    }

    /// A secret a peer sent gets pages of its own: the byte after it is on a guard page, not in a slot next to a key.
    @Test func anIsolatedSecretEndsOnAGuardPage() throws {
        for count in [1, 40, 2048] {
            let secret = SecureBytes(isolatedCount: count)
            let end = secret.withUnsafeBytes { Int(bitPattern: $0.baseAddress!) + count }
            let after = try #require(try Self.mapping(containing: end))
            #expect(after.permissions.hasPrefix("---"), "the byte after an isolated \(count)-byte secret is readable")
            let slot = SecureBytes(count: count)
            let slotEnd = slot.withUnsafeBytes { Int(bitPattern: $0.baseAddress!) + count }
            #expect(try #require(try Self.mapping(containing: slotEnd)).permissions.hasPrefix("rw"))
        }
    }

    /// The pipeline's plaintext side is sodium memory in both directions: every buffer a seal reads plaintext into
    /// (the one-byte look-ahead too) ends at a guard page, and, checked as root, every buffer a seal reads into and an
    /// open writes plaintext from is locked. Checked as each buffer is used: the pipeline frees them when it ends.
    /// Sizes: one batch hashed inline, one hashed beside, several batches of an input of unknown length.
    @Test func everyBatchsPlaintextSideIsSodiumMemory() throws {
        for (count, hinted) in [(1000, true), (1 << 20, true), (2 << 20 + 7, false)] {
            let plaintext = testBytes(count, seed: UInt64(count))
            let source = RecordingSource(plaintext, hinted: hinted)
            let sealed = MemorySink()
            let key = SecretKey.random()
            _ = try SealedFile.seal(from: source, to: sealed, dataKey: key, stanzas: [], digests: true)
            #expect(!source.buffers.isEmpty)
            if !hinted { #expect(source.buffers.contains { $0.count == 1 }, "no look-ahead read of an input of unknown length") }
            for buffer in source.buffers {
                #expect(buffer.guarded, "a seal of \(count) bytes read \(buffer.count) into memory without a guard page after it")
                #expect(buffer.locked || geteuid() != 0, "a seal of \(count) bytes read \(buffer.count) into unlocked memory")
            }
            let encrypted = MemorySource(sealed.bytes)
            let (header, length) = try SealedFileHeader.read(from: encrypted)
            let opened = RecordingSink()
            _ = try SealedFile.openPayload(from: encrypted, to: opened, header: header, headerLength: length, dataKey: key, digests: true)
            #expect(opened.bytes == plaintext)
            #expect(!opened.buffers.isEmpty)
            for buffer in opened.buffers {
                #expect(buffer.locked || geteuid() != 0, "an open of \(count) bytes wrote \(buffer.count) from unlocked memory")
            }
        }
    }

    /// How a buffer the pipeline handed out was, while it was in use.
    private struct SeenBuffer {
        var count: Int
        /// Whether the page at or after its end is inaccessible.
        var guarded: Bool
        /// Whether its mappings hold locked pages.
        var locked: Bool

        init(_ buffer: UnsafeRawBufferPointer) {
            let start = Int(bitPattern: buffer.baseAddress)
            let page = Int(sysconf(Int32(_SC_PAGESIZE)))
            let end = (start + buffer.count + page - 1) / page * page
            let mappings = (try? SecureMemoryTests.mappings()) ?? []
            count = buffer.count
            guarded = mappings.first { $0.range.contains(end) }?.permissions.hasPrefix("---") ?? false
            locked = mappings.contains { $0.range.overlaps(start..<start + max(buffer.count, 1)) && $0.fields["Locked", default: 0] > 0 }
        }
    }

    /// Plaintext read as a stream, seeing each buffer it is read into.
    private final class RecordingSource: ByteSource {
        let inner: MemorySource
        let hinted: Bool
        private(set) var buffers: [SeenBuffer] = []
        init(_ bytes: [UInt8], hinted: Bool) {
            inner = MemorySource(bytes)
            self.hinted = hinted
        }
        var remainingHint: Int? { hinted ? inner.remainingHint : nil }
        func read(into buffer: UnsafeMutableRawBufferPointer) throws(CofferCryptoError) -> Int {
            buffers.append(SeenBuffer(UnsafeRawBufferPointer(buffer)))
            return try inner.read(into: buffer)
        }
    }

    /// A sink keeping the bytes, seeing each buffer it is given.
    private final class RecordingSink: ByteSink {
        private(set) var bytes: [UInt8] = []
        private(set) var buffers: [SeenBuffer] = []
        func write(_ buffer: UnsafeRawBufferPointer) throws(CofferCryptoError) {
            buffers.append(SeenBuffer(buffer))
            bytes.append(contentsOf: buffer)
        }
    }

    /// A secret an array can hold.
    private final class Held {
        let secret: SecureBytes
        init(_ secret: consuming SecureBytes) { self.secret = secret }
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
