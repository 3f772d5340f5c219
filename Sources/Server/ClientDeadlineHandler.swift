import CLinux
import Glibc
import HTTPTypes
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
///
/// The answer is watched while any is owed (pipelined requests come in before the first answer is written) and until
/// the client took what was written, and a client cut for it is reset, so that the kernel drops what it did not take.
/// A trusted proxy's answers are not watched (``ClientLimits/trustedProxies``).
///
/// - **A body answered before it ended** (a refusal: 401, 404, 409, 413) is drained at the body's rate, for at most
///   ``lingering`` x `timeout` after the answer, as nginx's `lingering_close` does: clients that send the whole body
///   before reading (Python's `http.client`) get the answer. Cut at the head's deadline instead, an uploader at 1 MB/s
///   was reset mid-body, and the reset dropped the answer it had not read yet (helper-53).
final class ClientDeadlineHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let limits: ClientLimits
    private let timeout: TimeAmount
    /// The head's clock: runs while the connection waits for a request head and owes no answer.
    private var headDeadline: Scheduled<Void>?
    /// The body's clock: runs while the server has asked for more of a body and none came.
    private var bodyDeadline: Scheduled<Void>?
    /// The end of a body's drain after its answer: `lingering` x `timeout` after the answer, as nginx's 30 s
    /// `lingering_time` at its 10 s timeouts.
    private var lingerDeadline: Scheduled<Void>?
    static let lingering = 3
    /// Request heads received, and answers whose end was written: while fewer answers than heads are written, one is
    /// owed (pipelined requests are read before the answer to the first is written), and the answer watch runs.
    private var heads = 0
    private var answered = 0
    /// Answers whose end was handed to the channel. The same answers as `answered`, counted earlier: a body's clock
    /// must stop the moment its own answer ends (a refusal), while an answer stops being owed only once it is written,
    /// which can be long after (it waits behind the bytes before it). So the one ending now answers request `ending`.
    private var ending = 0
    /// Whether the server closed its side (after a `Connection: close` request, or its own 400): heads read past it
    /// are never answered, and no answer is owed (helper-54: counted as owed, they kept every clock off for good).
    private var outputClosed = false
    /// The body being received: the number of its request, the client's credit, since when the server has been
    /// waiting (nil while it is not asking for more), and where the client stands on being asked for it.
    private var body: (request: Int, credit: RateCredit, waitingSince: NIODeadline?, asked: Asked)?

    /// A client that sent `Expect: 100-continue` waits for the interim `100 Continue` (``ContinueMiddleware``) before
    /// it sends its body, and the body's clock runs only once the client has it: started at the head, it cut such a
    /// request pipelined behind a download (helper-55); started as the 100 was written, behind the download's tail
    /// still in the socket, it did too. While bytes wait in the socket the answer's rate rule holds the client.
    enum Asked {
        /// Waits to be asked (`Expect: 100-continue`, no 100 written yet).
        case notYet
        /// The 100 is written; bytes before it (or it) wait for the client.
        case sent
        /// Sent no `Expect`, or took the 100: the body's clock may run.
        case taken
    }
    /// Whether an answer's head was written and its end not yet: no interim answer may come inside it.
    private var answering = false
    /// Whether the connection closes once the answer being written ends: it refused a request whose client waits to be
    /// asked for its body, and that body will not come.
    private var closingAfterAnswer = false
    /// The answer watch: the client's credit and the socket's counts at the last sample, taken every `timeout` from a
    /// request head until every answer owed was written and taken by the client; nil on a channel that is not a socket.
    private var answer: (credit: RateCredit, last: TCPProgress?, check: RepeatedTask)?
    /// Whether the peer is one of `limits.trustedProxies`: its answers are not watched.
    private var fromProxy = false

    init(limits: ClientLimits) {
        self.limits = limits
        self.timeout = TimeAmount(limits.timeout)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    private func start(_ context: ChannelHandlerContext) {
        fromProxy = context.channel.remoteAddress?.ipAddress.flatMap(ClientLimits.peerAddress).map { limits.trustedProxies.contains($0) } ?? false
        armHead(context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            heads += 1
            body = (heads, RateCredit(limits), nil, request.headerFields.expectsContinue ? .notYet : .taken)
            cancel(&headDeadline)
            watchAnswer(context)
        case .body(let bytes):
            if var receiving = body {
                if let since = receiving.waitingSince { receiving.credit.waited(.now() - since) }
                receiving.credit.moved(bytes.readableBytes)
                receiving.waitingSince = nil
                body = receiving
                cancel(&bodyDeadline)
            }
        case .end:
            body = nil
            cancel(&bodyDeadline)
            cancel(&lingerDeadline)
            // A body drained after its answer: the head's clock starts now, for the next request.
            if (answered >= heads || outputClosed) && answer == nil { armHead(context) }
        }
        context.fireChannelRead(data)
    }

    /// The server asks for more: while a body is coming, the client's clock runs until some arrives.
    func read(context: ChannelHandlerContext) {
        startBodyClock(context)
        context.read()
    }

    /// The client has the 100 Continue: its body's clock starts.
    private func bodyAsked(_ context: ChannelHandlerContext) {
        guard body?.asked == .sent else { return }
        body?.asked = .taken
        startBodyClock(context)
    }

    /// Starts the body's clock, unless it runs already or the client was not asked for the body yet.
    private func startBodyClock(_ context: ChannelHandlerContext) {
        guard var receiving = body, receiving.asked == .taken, receiving.waitingSince == nil else { return }
        receiving.waitingSince = .now()
        body = receiving
        let channel = context.channel
        cancel(&bodyDeadline)
        bodyDeadline = context.eventLoop.scheduleTask(in: max(receiving.credit.left, .zero)) { Self.cut(channel) }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let interim) where interim.status == .continue:
            // The client is asked for its body now; never inside an answer already begun, which it would break.
            guard !answering else {
                promise?.succeed()
                return
            }
            // A route reads the body as the 100 goes out, and the server asks from then: the body's clock runs once
            // the client has the 100 (helper-56: left to a read that came before it, a client that sent nothing was
            // held to Hummingbird's 60 s idle timer).
            guard body?.request == ending + 1 else { return context.write(data, promise: promise) }
            body?.asked = .sent
            let written = context.eventLoop.makePromise(of: Void.self)
            written.futureResult.cascade(to: promise)
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            written.futureResult.whenSuccess {
                let (handler, context) = loopBound.value
                guard let progress = TCPProgress.sample(context.channel) else { return handler.bodyAsked(context) }
                progress.whenComplete { result in
                    let (handler, context) = loopBound.value
                    if case .success(let now) = result, now.waiting, handler.answer != nil { return }  // the answer watch takes it on
                    handler.bodyAsked(context)
                }
            }
            return context.write(data, promise: written)
        case .head(var final):
            answering = true
            guard let pending = body, pending.request == ending + 1, pending.asked == .notYet else { return context.write(data, promise: promise) }
            // Refused before its client was asked for the body, which it therefore never sends: the connection closes
            // after this answer, and says so, rather than read the next request as that body (RFC 9110 10.1.1).
            final.headerFields[.connection] = "close"
            closingAfterAnswer = true
            return context.write(wrapOutboundOut(.head(final)), promise: promise)
        case .body:
            return context.write(data, promise: promise)
        case .end:
            answering = false
        }
        // An answer written before its request's body ended (a refusal): the rest of the body is drained at its rate,
        // for a bounded time. Only its own answer: a pipelined request's body keeps its clock while the answer to the
        // one before it ends (helper-53: cleared, no clock was left and the body never had to come).
        ending += 1
        if body?.request == ending, lingerDeadline == nil {
            let channel = context.channel
            lingerDeadline = context.eventLoop.scheduleTask(in: timeout * Int64(Self.lingering)) { Self.cut(channel) }
        }
        let written = context.eventLoop.makePromise(of: Void.self)
        written.futureResult.cascade(to: promise)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        written.futureResult.whenSuccess {
            let (handler, context) = loopBound.value
            handler.answered += 1
            if handler.closingAfterAnswer {
                // Half-closed, so the watch goes on until the client took the answer (or is reset for not taking it),
                // and the drain's bound ends the rest: a full close left up to 4 MiB of the answer in the kernel, in
                // FIN-WAIT-1 for as long as the client acknowledged probes (helper-57: 10 clients, 30 MB).
                handler.outputClosed = true
                context.close(mode: .output, promise: nil)
            }
            handler.endWatchIfTaken(context, now: nil)
        }
        context.write(data, promise: written)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .output {
            outputClosed = true
            endWatchIfTaken(context, now: nil)
        }
        context.close(mode: mode, promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        stop()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) { stop() }

    /// From a request head until every answer owed was written and acknowledged, samples every `timeout` what the
    /// client acknowledged; a window counts against it only if bytes waited for it at both of its ends (a handler that
    /// wrote late is not its fault). A client that falls behind is reset, not closed: a close leaves what it did not
    /// read in the kernel, held for as long as the client keeps answering probes (helper-52: 300 such sockets held
    /// 1.2 GB of kernel memory, outside the cap on connections).
    private func watchAnswer(_ context: ChannelHandlerContext) {
        guard answer == nil, !fromProxy, context.channel is any SocketOptionProvider else { return }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let check = context.eventLoop.scheduleRepeatedTask(initialDelay: timeout, delay: timeout) { task in
            let (_, context) = loopBound.value
            TCPProgress.sample(context.channel)?.whenComplete { result in
                let (handler, context) = loopBound.value
                guard var watched = handler.answer, watched.check === task else { return task.cancel() }
                guard case .success(let now) = result else { return handler.endWatch(context) }  // no TCP_INFO: a Unix socket
                if let last = watched.last, last.waiting && now.waiting {
                    watched.credit.waited(handler.timeout)
                    watched.credit.moved(Int(clamping: now.acknowledged &- last.acknowledged))
                    if watched.credit.left <= .zero { return Self.cut(context.channel) }
                }
                watched.last = now
                handler.answer = watched
                if !now.waiting { handler.bodyAsked(context) }
                handler.endWatchIfTaken(context, now: now)
            }
        }
        answer = (RateCredit(limits), nil, check)
        TCPProgress.sample(context.channel)?.whenSuccess { first in
            let (handler, _) = loopBound.value
            if handler.answer?.last == nil { handler.answer?.last = first }
        }
    }

    /// Once no answer is owed and the client took every byte written, the watch ends and the head's clock starts. An
    /// answer whose end is written may still wait in the socket's buffer (up to 4 MiB): until the client takes it, the
    /// watch goes on, or a client that never read would be closed gracefully by the head's clock and keep it.
    private func endWatchIfTaken(_ context: ChannelHandlerContext, now: TCPProgress?) {
        guard answered >= heads || outputClosed else { return }
        guard answer != nil else { return armHead(context) }
        guard let now else {
            // The answer's end was just written: ask the socket now rather than wait for the next sample.
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            TCPProgress.sample(context.channel)?.whenComplete { result in
                let (handler, context) = loopBound.value
                guard case .success(let now) = result else { return handler.endWatch(context) }
                handler.endWatchIfTaken(context, now: now)
            }
            return
        }
        if !now.waiting { endWatch(context) }
    }

    private func endWatch(_ context: ChannelHandlerContext) {
        answer?.check.cancel()
        answer = nil
        if answered >= heads || outputClosed { armHead(context) }
    }

    /// Closes `channel`, with a reset if bytes of an answer wait for the client in the socket: a close leaves them in
    /// the kernel, held for as long as the client acknowledges probes, and outside the cap on connections (helper-52:
    /// 300 such sockets, 1.2 GB; helper-53 made them through the body's clock). Without bytes waiting the close is
    /// graceful, so that nothing the client was sent before is lost. For the body's and the answer's clocks.
    private static func cut(_ channel: any Channel) {
        guard let sampled = TCPProgress.sample(channel) else { return channel.close(promise: nil) }
        sampled.whenComplete { result in
            guard case .success(let now) = result, now.waiting, let socket = channel as? any SocketOptionProvider else {
                return channel.close(promise: nil)
            }
            socket.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    private func stop() {
        cancel(&headDeadline)
        cancel(&bodyDeadline)
        cancel(&lingerDeadline)
        answer?.check.cancel()
        answer = nil
    }

    private func cancel(_ deadline: inout Scheduled<Void>?) {
        deadline?.cancel()
        deadline = nil
    }

    private func armHead(_ context: ChannelHandlerContext) {
        cancel(&headDeadline)
        // A body still draining after its answer has its own clocks; the head's starts when it ends.
        guard context.channel.isActive, body == nil else { return }
        let channel = context.channel
        // Graceful: the head's clock runs only once every answer was taken, except from a trusted proxy, which may still
        // be reading the last one (a reset cut its tail: CI, the slow-client campaign's proxy phase).
        headDeadline = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
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
