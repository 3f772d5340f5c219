import NIOCore
import NIOEmbedded
import NIOHTTPTypes
import Synchronization
import Testing

@testable import CofferServer

/// A streamed answer waits for its pieces to reach the connection (``AnswerPacer``), and never past the connection's end.
@Suite struct AnswerPacingTests {
    @Test func aRouteWaitsUntilItsLastPieceButOneReachedTheChannel() async throws {
        let channel = EmbeddedChannel(handler: AnswerPacer())
        // Found in the pipeline as the routes find it. The embedded loop runs what is submitted to it only when told to.
        let asking = Task { await AnswerPacing.of(channel) }
        for _ in 0..<100 {
            try await Task.sleep(for: .milliseconds(20))
            channel.embeddedEventLoop.run()
        }
        let pacing = try #require(await asking.value)
        await pacing.hand(100, ahead: 100)  // nothing before it is owed: no wait
        let second = Waiting { await pacing.hand(100, ahead: 100) }
        try await Task.sleep(for: .milliseconds(300))
        #expect(!second.isFinished, "handed 200 bytes, none reached the channel, and the route went on")
        try channel.writeOutbound(HTTPResponsePart.body(ByteBuffer(repeating: 0, count: 60)))
        try await Task.sleep(for: .milliseconds(300))
        #expect(!second.isFinished, "60 of the first 100 bytes reached the channel, and the route went on")
        try channel.writeOutbound(HTTPResponsePart.body(ByteBuffer(repeating: 0, count: 40)))
        await second.task.value
        // A connection that ends frees a route waiting on it.
        let third = Waiting { await pacing.hand(1000, ahead: 0) }
        try await Task.sleep(for: .milliseconds(300))
        #expect(!third.isFinished)
        _ = try channel.finish()
        await third.task.value
    }
}

/// A task, and whether it has returned.
private struct Waiting {
    private final class Flag: Sendable { let value = Mutex(false) }
    private let flag = Flag()
    let task: Task<Void, Never>

    init(_ body: @escaping @Sendable () async -> Void) {
        let flag = self.flag
        task = Task {
            await body()
            flag.value.withLock { $0 = true }
        }
    }

    var isFinished: Bool { flag.value.withLock { $0 } }
}
