import CLinux
import NIOCore
import NIOHTTPTypes

/// Closes a connection whose client is too slow to send its request or to read its answer, so that a few hosts cannot
/// hold every connection (and the memory behind them) by trickling bytes or by never reading:
///
/// - **The head** must arrive whole within `timeout` of the connection opening, or of the server finishing its answer
///   to the previous request. A client that trickled partial headers (a byte every few seconds) kept an idle timer from
///   firing and held connections open for minutes.
/// - **The body**, while the server asks for more of it, and **the answer**, while bytes of it wait for the client to
///   take them, must move at `minimumRate` bytes a second, and the client may fall at most `timeout` behind that rate
///   (``RateCredit``). Counted as an allowance that grew with what was sent, 1 MB sent fast bought a 16-minute stall;
///   an answer had no deadline at all, and 600 clients that asked for a blob and never read took the server from 62 to
///   1,460 MiB (helper-51).
///
/// Only the client's time counts. The body's clock runs only while the server has asked for more: a handler that is
/// slow to read (a blob written to a slow store) applies backpressure, and the client is not blamed for bytes it was
/// not allowed to send. The answer's clock runs only while bytes of it are unsent or unacknowledged in the socket:
/// a handler slow to produce its answer is not the client's fault. What the client took is the kernel's count of bytes
/// it acknowledged (`TCP_INFO`, sampled every `timeout`), not what the server could hand the kernel: a socket's send
/// buffer (up to 4 MiB) wakes the writer only once half of it has drained, so a deadline on writability cut honest
/// readers under ~150 KB/s. Acknowledgements come at the receiver's segment size (about 1.4 KB on a network, 64 KB on
/// loopback, so at the defaults a loopback reader below about 9 KB/s falls behind: helper-52 measured it).
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
    /// The body being received: the client's credit, and since when the server has been waiting (nil while it is not
    /// asking for more).
    private var body: (credit: RateCredit, waitingSince: NIODeadline?)?
    /// Answers being written: the client's credit and the socket's counts at the last sample, taken every `timeout`
    /// from a request head until the answers' ends are written; nil on a channel that is not a socket.
    private var answer: (credit: RateCredit, last: TCPProgress?, check: RepeatedTask)?

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
            body = (RateCredit(limits), nil)
            disarm()
            watchAnswer(context)
        case .body(let bytes):
            if var receiving = body {
                if let since = receiving.waitingSince { receiving.credit.waited(.now() - since) }
                receiving.credit.moved(bytes.readableBytes)
                receiving.waitingSince = nil
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
            arm(context, in: receiving.credit.left)
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
            guard handler.heads == answered else { return }
            handler.answer?.check.cancel()
            handler.answer = nil
            handler.arm(context, in: handler.timeout)
        }
        context.write(data, promise: written)
    }

    func channelInactive(context: ChannelHandlerContext) {
        stop()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) { stop() }

    /// From a request head until its answer is written, samples every `timeout` what the client acknowledged; a window
    /// counts against it only if bytes waited for it at both of its ends (a handler that wrote late is not its fault).
    private func watchAnswer(_ context: ChannelHandlerContext) {
        guard answer == nil, TCPProgress.sample(context.channel) != nil else { return }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let check = context.eventLoop.scheduleRepeatedTask(initialDelay: timeout, delay: timeout) { task in
            let (_, context) = loopBound.value
            TCPProgress.sample(context.channel)?.whenComplete { result in
                let (handler, context) = loopBound.value
                guard case .success(let now) = result, var watched = handler.answer else { return task.cancel() }
                if let last = watched.last, last.waiting && now.waiting {
                    watched.credit.waited(handler.timeout)
                    watched.credit.moved(Int(clamping: now.acknowledged &- last.acknowledged))
                    if watched.credit.left <= .zero { return context.channel.close(promise: nil) }
                }
                watched.last = now
                handler.answer = watched
            }
        }
        answer = (RateCredit(limits), nil, check)
        TCPProgress.sample(context.channel)?.whenSuccess { first in
            let (handler, _) = loopBound.value
            if handler.answer?.last == nil { handler.answer?.last = first }
        }
    }

    private func stop() {
        disarm()
        answer?.check.cancel()
        answer = nil
    }

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

/// How far a client may fall behind the minimum rate: it starts with `timeout` of credit, loses the time the server
/// waits for it and earns a second for every `minimumRate` bytes it moves, never holding more than `timeout`. A client
/// at the rate is never cut; one that stops is cut `timeout` later, however much it sent before.
struct RateCredit {
    private let cap: TimeAmount
    private let rate: Int
    private(set) var left: TimeAmount

    init(_ limits: ClientLimits) {
        cap = TimeAmount(limits.timeout)
        rate = max(1, limits.minimumRate)
        left = cap
    }

    mutating func waited(_ time: TimeAmount) { left = left - time }

    mutating func moved(_ bytes: Int) {
        let earned = bytes >= Int.max / 1_000_000_000 ? cap : .nanoseconds(Int64(bytes * 1_000_000_000 / rate))
        left = min(cap, left + earned)
    }
}

/// What the kernel says of a TCP socket's sending: the bytes its peer acknowledged, and whether any wait for it (unsent,
/// or sent and not acknowledged).
struct TCPProgress {
    var acknowledged: UInt64
    var waiting: Bool

    /// The socket's counts now; nil for a channel that is not a socket (a test's embedded channel), a failed future for
    /// one without `TCP_INFO` (a Unix socket).
    static func sample(_ channel: any Channel) -> EventLoopFuture<TCPProgress>? {
        guard let socket = channel as? any SocketOptionProvider else { return nil }
        let info: EventLoopFuture<coffer_tcp_info> = socket.unsafeGetSocketOption(level: .tcp, name: .tcp_info)
        return info.map { TCPProgress(acknowledged: $0.bytes_acked, waiting: $0.notsent_bytes > 0 || $0.unacked > 0) }
    }
}
