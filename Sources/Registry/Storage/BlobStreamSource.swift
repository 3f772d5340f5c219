import CofferCrypto
import Foundation
import NIOCore

/// A ``BlobStream`` read as a blocking ``ByteSource``: how the chunk pipeline, which reads on threads of its own,
/// consumes a blob from a remote store.
///
/// A task moves the stream's buffers into a queue of at most 4 MiB, awaiting room without blocking anything; `read`
/// blocks its caller until bytes arrive. So `read` must be called from a thread of its own (the pipeline's, an
/// ``Offload``), never from Swift's cooperative pool, whose threads the task itself needs.
final class BlobStreamSource: ByteSource, @unchecked Sendable {
    private static let limit = 4 << 20
    private let condition = NSCondition()
    private var queue: [ByteBuffer] = []
    private var queued = 0
    private var finished = false
    private var failure: String?
    private var roomWaiter: CheckedContinuation<Void, Never>?
    private var remaining: Int?
    private let what: String
    private let open: @Sendable () async throws(CofferRegistryError) -> BlobStream
    private var task: Task<Void, Never>?

    /// `open` starts the stream, at the first read: sources made for every file of a version cost nothing until used.
    /// `length` is the blob's size when known; `what` names the blob in errors.
    init(length: Int?, what: String, open: @escaping @Sendable () async throws(CofferRegistryError) -> BlobStream) {
        remaining = length
        self.what = what
        self.open = open
    }

    private func start() {
        task = Task { [self] in
            do {
                for try await buffer in try await open() {
                    await room()
                    condition.withLock {
                        queue.append(buffer)
                        queued += buffer.readableBytes
                        condition.broadcast()
                    }
                }
                finish(failure: nil)
            } catch {
                finish(failure: (error as? CofferRegistryError)?.description ?? "\(error)")
            }
        }
    }

    deinit { task?.cancel() }

    private func finish(failure: String?) {
        condition.withLock {
            finished = true
            self.failure = failure
            condition.broadcast()
        }
    }

    /// Returns once the queue has room for another buffer.
    private func room() async {
        await withCheckedContinuation { (waiter: CheckedContinuation<Void, Never>) in
            let ready = condition.withLock {
                guard queued >= Self.limit else { return true }
                roomWaiter = waiter
                return false
            }
            if ready { waiter.resume() }
        }
    }

    var remainingHint: Int? { condition.withLock { remaining } }

    /// Lets the producer go on once the queue has room (called holding the lock; resuming only schedules its task).
    private func wakeProducer() {
        if queued < Self.limit, let waiting = roomWaiter {
            roomWaiter = nil
            waiting.resume()
        }
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(CofferCryptoError) -> Int {
        var filled = 0
        let error: String? = condition.withLock {
            if task == nil { start() }
            while filled < buffer.count {
                while queue.isEmpty && !finished {
                    wakeProducer()
                    condition.wait()
                }
                guard !queue.isEmpty else { return failure }
                let n = min(buffer.count - filled, queue[0].readableBytes)
                queue[0].withUnsafeReadableBytes { bytes in
                    (buffer.baseAddress! + filled).copyMemory(from: bytes.baseAddress!, byteCount: n)
                }
                queue[0].moveReaderIndex(forwardBy: n)
                if queue[0].readableBytes == 0 { queue.removeFirst() }
                queued -= n
                filled += n
                remaining = remaining.map { max(0, $0 - n) }
            }
            wakeProducer()
            return nil
        }
        if let error { throw .io(path: what, reason: error) }
        return filled
    }
}
