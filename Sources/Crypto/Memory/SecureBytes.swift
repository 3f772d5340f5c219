import CLinux
import CSodium

#if canImport(Glibc)
import Glibc
#endif

/// A fixed-size buffer of secret bytes in libsodium's guarded heap.
///
/// The memory comes from `sodium_malloc`: it sits between guard pages, is `mlock`ed so it is not
/// swapped out, and is wiped and freed when the value is dropped. Secrets of up to 2 KiB share sodium_malloc chunks, a
/// slot each between canaries, wiped when dropped and then reused (``SecureSlab``: pages of its own cost a small key
/// 33-170 µs); bytes a peer sent (``init(isolatedCount:)``) always get pages of their own.
/// The type is `~Copyable`, so a secret has exactly one owner and is never silently duplicated the way `Array`, `Data` or
/// `String` duplicate their storage.
///
/// Buffers of ``largeSize`` or more (a decrypted model) are mapped on their own, between the same guard pages,
/// kept out of core dumps, locked page by page as they are first written (`MLOCK_ONFAULT`: nothing is written before
/// its page is locked), and wiped by libsodium's `sodium_munlock` like its own heap. sodium_malloc would fault and lock
/// 100 MB up front, on one thread, before decryption starts; here they come in a batch at a time as the pipeline
/// reserves each batch's output (``MemoryRegionSink``), one batch ahead of the threads that decrypt.
/// The mapping starts on a 2 MiB boundary, so a system whose transparent huge pages are `always` gives it huge pages,
/// but it does not ask for them (`MADV_HUGEPAGE`): that makes a fault compact memory synchronously (`defrag=madvise`),
/// and on a VM that reports free pages to its host (the Firecracker VMs Coffer is measured on, 2026-12) every fresh
/// huge page is faulted in again by the host. Writing 100 MB first-touch took 290-390 ms with the advice and 71-119 ms
/// without (a C loop, 3 s apart, idle machine); `coffer infer` on a 100 MB model spent half its CPU in
/// `clear_page_erms` under huge-page faults.
///
/// ```swift
/// let key = SecureBytes.random(count: 32)
/// key.withUnsafeBytes { bytes in /* use the key */ }
/// ```
public struct SecureBytes: ~Copyable {
    private let pointer: UnsafeMutableRawPointer
    /// The number of bytes held.
    public let count: Int
    private let storage: Storage

    private enum Storage {
        /// A slot in this chunk of small secrets.
        case slot(SecureSlab.Chunk)
        /// A region of its own from sodium_malloc.
        case sodium
        /// A large buffer's whole mapping, guard pages included.
        case mapping(UnsafeMutableRawBufferPointer)
    }

    /// The size from which a buffer gets a mapping of its own.
    public static let largeSize = 4 << 20

    /// Allocates `count` zeroed secret bytes.
    public init(count: Int) {
        self.init(count: count, slotAllowed: true)
    }

    /// Allocates `count` zeroed secret bytes in pages of their own, never in a slot next to another secret: for a
    /// secret whose size and bytes a peer chose (a bearer token, a cookie, a request to the agent), so that a bug reading
    /// past it meets a guard page rather than a key, and a flood of such requests holds locked memory only while they
    /// are served.
    public init(isolatedCount count: Int) {
        self.init(count: count, slotAllowed: false)
    }

    private init(count: Int, slotAllowed: Bool) {
        _ = Sodium.ready
        precondition(count >= 0, "SecureBytes count must not be negative")
        self.count = count
        if slotAllowed, let sizeClass = SecureSlab.sizeClass(for: count) {
            let chunk: SecureSlab.Chunk
            (pointer, chunk) = SecureSlab.allocate(sizeClass: sizeClass)
            storage = .slot(chunk)
            return
        }
        if count >= Self.largeSize {
            // A fresh anonymous mapping is zeroed by the kernel.
            let (mapping, pointer) = Self.mapGuarded(count)
            (self.pointer, storage) = (pointer, .mapping(mapping))
            return
        }
        guard let raw = sodium_malloc(count) else {
            fatalError("sodium_malloc failed: out of memory for \(count) secret bytes")
        }
        sodium_memzero(raw, count)
        self.pointer = raw
        self.storage = .sodium
    }

    /// Maps `count` bytes starting on a 2 MiB boundary, with an inaccessible page on each side, locked as they are
    /// touched (as far as RLIMIT_MEMLOCK allows, like sodium_malloc; a kernel without mlock2 locks them at once).
    private static func mapGuarded(_ count: Int) -> (UnsafeMutableRawBufferPointer, UnsafeMutableRawPointer) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let huge = 2 << 20
        let span = (count + page - 1) / page * page
        let length = span + huge + 2 * page
        guard let mapped = coffer_map_anonymous(length) else {
            fatalError("mmap failed: out of memory for \(count) secret bytes")
        }
        let start = (Int(bitPattern: mapped) + page + huge - 1) / huge * huge
        let data = UnsafeMutableRawPointer(bitPattern: start)!
        mprotect(data - page, page, PROT_NONE)
        mprotect(data + span, page, PROT_NONE)
        if coffer_lock_on_fault(data, count) != 0 && (errno == EINVAL || errno == ENOSYS) { _ = sodium_mlock(data, count) }
        return (UnsafeMutableRawBufferPointer(start: mapped, count: length), data)
    }

    /// Allocates `count` bytes filled from libsodium's CSPRNG.
    public static func random(count: Int) -> SecureBytes {
        let bytes = SecureBytes(count: count)
        bytes.withUnsafeMutableBytes { Sodium.randomBytes($0) }
        return bytes
    }

    /// Copies `source` into a new secret buffer. The caller remains responsible for wiping `source`.
    public init(copying source: UnsafeRawBufferPointer) {
        self.init(count: source.count)
        if let base = source.baseAddress, source.count > 0 {
            pointer.copyMemory(from: base, byteCount: source.count)
        }
    }

    /// sodium_munlock wipes the bytes before it unlocks them (sodium_free calls it too).
    deinit {
        switch storage {
        case .slot(let chunk):
            SecureSlab.release(pointer, chunk: chunk)
        case .sodium:
            sodium_free(pointer)
        case .mapping(let mapping):
            _ = sodium_munlock(pointer, count)
            munmap(mapping.baseAddress!, mapping.count)
        }
    }

    /// Gives read access to the secret bytes for the duration of `body`.
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    /// Gives write access to the secret bytes for the duration of `body`.
    public func withUnsafeMutableBytes<R, E: Error>(_ body: (UnsafeMutableRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeMutableRawBufferPointer(start: pointer, count: count))
    }

    /// Compares with `other` in constant time.
    public func constantTimeEquals(_ other: borrowing SecureBytes) -> Bool {
        guard count == other.count else { return false }
        return other.withUnsafeBytes { sodium_memcmp(pointer, $0.baseAddress!, count) == 0 }
    }

    /// Returns a new buffer holding bytes `range` of this one.
    public func slice(_ range: Range<Int>) -> SecureBytes {
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "slice out of bounds")
        return SecureBytes(copying: UnsafeRawBufferPointer(start: pointer + range.lowerBound, count: range.count))
    }
}
