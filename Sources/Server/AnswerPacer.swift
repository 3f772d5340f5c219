import NIOCore
import NIOHTTPTypes
import Synchronization

/// Keeps a streamed answer from being read faster than its connection takes it. Hummingbird's writer accepts a piece
/// whenever it last saw the channel writable, and it learns that the channel is full only once the event loop runs its
/// writes: on a loop busy with many connections, a blob route that read its next piece as each write returned queued
/// 2.3-4 MB per client that never read (200 such clients; 0.6 MB at 50), about 2 GB over a cap of 512 connections.
/// With ``AnswerPacing`` the route reads a piece only once the one before it has reached the channel.
final class AnswerPacer: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    let pacing = AnswerPacing()

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .body(let bytes) = unwrapOutboundIn(data) { pacing.reached(bytes.readableBytes) }
        context.write(data, promise: promise)
    }

    /// Also when the connection closes: its pipeline is taken down.
    func handlerRemoved(context: ChannelHandlerContext) { pacing.end() }
}

/// A connection's answer bytes: those a route handed to the writer, and those that reached the channel.
final class AnswerPacing: Sendable {
    private struct State {
        var handed = 0
        var reached = 0
        var ended = false
        var waiting: [(bytes: Int, resume: CheckedContinuation<Void, Never>)] = []
    }
    private let state = Mutex(State())

    /// The pacing of the connection `channel` serves, nil when it has no ``AnswerPacer`` (a test's server).
    static func of(_ channel: any Channel) async -> AnswerPacing? {
        try? await channel.eventLoop.submit { try channel.pipeline.syncOperations.handler(type: AnswerPacer.self).pacing }.get()
    }

    /// Hands `bytes` to the writer, then waits until no more than `ahead` bytes handed have not reached the channel
    /// (or the connection ends). Other answers' bytes on the connection count as reached too, so the wait may end up
    /// to their size early.
    func hand(_ bytes: Int, ahead: Int) async {
        let target = state.withLock { state in
            state.handed += bytes
            return state.handed - ahead
        }
        await withCheckedContinuation { resume in
            let now = state.withLock { state in
                guard state.reached < target, !state.ended else { return true }
                state.waiting.append((target, resume))
                return false
            }
            if now { resume.resume() }
        }
    }

    fileprivate func reached(_ bytes: Int) {
        let ready = state.withLock { state in
            state.reached += bytes
            let reached = state.reached
            let ready = state.waiting.filter { $0.bytes <= reached }
            state.waiting.removeAll { $0.bytes <= reached }
            return ready
        }
        for waiter in ready { waiter.resume.resume() }
    }

    fileprivate func end() {
        let all = state.withLock { state in
            state.ended = true
            defer { state.waiting = [] }
            return state.waiting
        }
        for waiter in all { waiter.resume.resume() }
    }
}
