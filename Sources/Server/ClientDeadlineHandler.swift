import NIOCore
import NIOHTTPTypes

/// Closes a connection whose client is too slow to send its request, as Apache's mod_reqtimeout does, so that a few
/// hosts cannot hold every connection (and the memory behind them) by trickling bytes:
///
/// - **The head** must arrive whole within `timeout` of the connection opening, or of the server finishing its answer
///   to the previous request. A client that trickled partial headers (a byte every few seconds) kept an idle timer from
///   firing and held connections open for minutes.
/// - **The body** gets `timeout`, plus one second for each `minimumRate` bytes it has sent. A byte every 20 seconds
///   held an upload open for hours; at the default 1,024 bytes a second a trickle is cut within seconds of its
///   allowance running out, while a client that keeps sending at that rate is never cut.
///
/// Only the client's time counts. The head's clock stops while a request is handled or its answer sent, however long a
/// large download takes (arming it at the request's end once cut every answer that took longer than the timeout). The
/// body's clock runs only while the server has asked for more of it: a handler that is slow to read (a blob written
/// to a slow store) applies backpressure, and the client is not blamed for the bytes it was not allowed to send.
final class ClientDeadlineHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let limits: ClientLimits
    private let timeout: TimeAmount
    private var deadline: Scheduled<Void>?
    /// Request heads received on this connection: an answer's end re-arms the head's clock only if no other request
    /// came in while it was written (a pipelined one is then being handled).
    private var heads = 0
    /// The body being received: how long the client has been waited for, what it sent, and since when the server has
    /// been waiting (nil while it is not asking for more).
    private var body: (waited: TimeAmount, received: Int, waitingSince: NIODeadline?)?

    init(limits: ClientLimits) {
        self.limits = limits
        self.timeout = TimeAmount(limits.timeout)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { arm(context, in: timeout) }
    }

    func channelActive(context: ChannelHandlerContext) {
        arm(context, in: timeout)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            heads += 1
            body = (.zero, 0, nil)
            disarm()
        case .body(let bytes):
            if var receiving = body {
                if let since = receiving.waitingSince { receiving.waited = receiving.waited + (.now() - since) }
                receiving.waitingSince = nil
                receiving.received += bytes.readableBytes
                body = receiving
                disarm()
            }
        case .end:
            body = nil
            disarm()
        }
        context.fireChannelRead(data)
    }

    /// The server asks for more: while a body is coming, the client's clock runs until some arrives.
    func read(context: ChannelHandlerContext) {
        if var receiving = body, receiving.waitingSince == nil {
            receiving.waitingSince = .now()
            body = receiving
            let allowed = timeout + .seconds(Int64(receiving.received / limits.minimumRate))
            arm(context, in: allowed - receiving.waited)
        }
        context.read()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .end = unwrapOutboundIn(data) else { return context.write(data, promise: promise) }
        // The answer's last part: once it is written, the connection waits for the next request head. An answer sent
        // before its request's body ended (a refusal) ends that body's clock: what is left of it is the head's.
        body = nil
        disarm()
        let answered = heads
        let written = context.eventLoop.makePromise(of: Void.self)
        written.futureResult.cascade(to: promise)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        written.futureResult.whenSuccess {
            let (handler, context) = loopBound.value
            if handler.heads == answered { handler.arm(context, in: handler.timeout) }
        }
        context.write(data, promise: written)
    }

    func channelInactive(context: ChannelHandlerContext) {
        disarm()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) { disarm() }

    private func disarm() {
        deadline?.cancel()
        deadline = nil
    }

    private func arm(_ context: ChannelHandlerContext, in delay: TimeAmount) {
        disarm()
        guard context.channel.isActive else { return }
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: max(delay, .zero)) { channel.close(promise: nil) }
    }
}
