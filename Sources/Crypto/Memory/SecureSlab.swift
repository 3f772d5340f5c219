import CSodium

/// The memory of small secrets: slots of 32 to 2,048 bytes carved from 16 KiB sodium_malloc chunks, wiped when a secret
/// is dropped and kept for the next one.
///
/// sodium_malloc gives every secret pages of its own (a guard page each side, mlock, mprotects; munlock and munmap when
/// freed): 33 µs for a 32-byte key here on one thread, 170 µs on each of two threads at once, since every mprotect and
/// munmap stops the other cores to flush their TLBs. One round of secure aggregation with 10 simulated sites made 215
/// of them. A chunk is one sodium_malloc region, locked and between guard pages like any other, and is never freed, as
/// OpenSSL's secure heap keeps its arena. What this gives up is a guard page between two small secrets of one process.
enum SecureSlab {
    /// Slot sizes; a secret takes the smallest that holds it.
    static let slotSizes = [32, 64, 128, 256, 512, 1024, 2048]
    static var largestSlot: Int { slotSizes[slotSizes.count - 1] }
    static let chunkBytes = 16 << 10

    private static let pool = Pool()

    /// The size class of a secret of `count` bytes, or `nil` when it is too large for a slot.
    static func sizeClass(for count: Int) -> Int? { slotSizes.firstIndex { $0 >= max(count, 1) } }

    /// A zeroed slot of size class `sizeClass`.
    static func allocate(sizeClass: Int) -> UnsafeMutableRawPointer { pool.take(sizeClass) }

    /// Wipes the whole slot and keeps it for the next secret of its size.
    static func release(_ slot: UnsafeMutableRawPointer, sizeClass: Int) {
        sodium_memzero(slot, slotSizes[sizeClass])
        pool.give(slot, sizeClass)
    }

    /// The bytes of `slot` if it is free (for tests: a slot given back and taken again at once holds its new secret).
    static func bytesIfFree(_ slot: UnsafeRawPointer, sizeClass: Int) -> [UInt8]? { pool.bytesIfFree(slot, sizeClass) }

    /// Free slots by size class, under a lock (a slot is taken or given in well under a microsecond).
    private final class Pool: @unchecked Sendable {
        private let lock = Lock()
        private var free: [[UnsafeMutableRawPointer]] = Array(repeating: [], count: SecureSlab.slotSizes.count)

        func take(_ sizeClass: Int) -> UnsafeMutableRawPointer {
            lock.withLock {
                if let slot = free[sizeClass].popLast() { return slot }
                guard let chunk = sodium_malloc(SecureSlab.chunkBytes) else {
                    fatalError("sodium_malloc failed: out of memory for a chunk of small secrets")
                }
                // sodium_malloc fills new memory with 0xdb; slots are handed out zeroed (and are wiped when given back).
                sodium_memzero(chunk, SecureSlab.chunkBytes)
                let size = SecureSlab.slotSizes[sizeClass]
                let slots = SecureSlab.chunkBytes / size
                free[sizeClass].reserveCapacity(free[sizeClass].count + slots)
                // Handed out from the chunk's start, so the last slot, which ends on the guard page, goes last.
                for k in (1..<slots).reversed() { free[sizeClass].append(chunk + k * size) }
                return chunk
            }
        }

        func give(_ slot: UnsafeMutableRawPointer, _ sizeClass: Int) {
            lock.withLock { free[sizeClass].append(slot) }
        }

        func bytesIfFree(_ slot: UnsafeRawPointer, _ sizeClass: Int) -> [UInt8]? {
            lock.withLock {
                guard free[sizeClass].contains(where: { UnsafeRawPointer($0) == slot }) else { return nil }
                return Array(UnsafeRawBufferPointer(start: slot, count: SecureSlab.slotSizes[sizeClass]))
            }
        }
    }
}
