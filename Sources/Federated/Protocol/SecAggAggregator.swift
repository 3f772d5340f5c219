public import CofferCrypto
import Foundation

/// The coordinator's side of one round of secure aggregation: it relays keys and encrypted shares, sums the masked
/// inputs, and at the end removes the masks with the shares the surviving sites release, so that it learns the sum and
/// nothing else.
///
/// Stages close one after another (``close()``): each needs at least t sites, else the round aborts with a one-line
/// reason and no result. The sum is kept as one running vector (memory does not grow with the sites). Reconstructed
/// secrets are checked against public commitments (a mask key against its public key, a seed against the commitment its
/// owner sent), and other subsets of shares are tried when one is wrong, so a site that sends a bad share is named and
/// cannot silently corrupt the aggregate.
///
/// ```swift
/// let round = try SecAggAggregator(session: id, round: 1, roster: roster, template: p, dimension: d + 1)
/// try round.accept(submission, from: index)   // per site, per stage
/// try round.close()                           // per stage
/// let sum = try round.result()
/// ```
public final class SecAggAggregator {
    public let session: [UInt8]
    public let round: Int
    public let parameters: RoundParameters
    public let dimension: Int
    let coordinatorKey: EphemeralKeyPair
    let identities: [Int: PublicIdentity]
    let indices: [Int]
    let graph: NeighbourGraph
    public private(set) var stage: Stage = .advertise
    /// Sites that answered the current stage.
    public private(set) var answered = Set<Int>()
    private(set) var keys: [Int: AdvertisedKeys] = [:]
    private var boxes: [Int: [ShareBox]] = [:]
    private var commitments: [Int: [UInt8]] = [:]
    private var sum: [UInt64]
    /// U1 ... U5: the sites that completed each stage.
    public private(set) var completed: [Stage: [Int]] = [:]
    private var signatures: [Int: [UInt8]] = [:]
    /// Released shares: slot (owner position * size + holder position) * 40.
    private let store: SecureBytes
    private var present: [Bool]
    /// How many share subsets reconstruction tries for one secret before it gives up.
    static let reconstructionAttempts = 256

    /// - Parameters:
    ///   - template: the round's parameters; its coordinator key is replaced by a fresh one for the round.
    ///   - dimension: elements of each site's vector (the update's coordinates and the weight).
    public init(
        session: [UInt8],
        round: Int,
        roster: [Int: PublicIdentity],
        template: RoundParameters,
        dimension: Int
    ) throws(FederatedError) {
        let indices = roster.keys.sorted()
        let graph = try NeighbourGraph(size: indices.count, neighbours: template.neighbours)
        try SecAggSite.checkThreshold(template.threshold, shares: graph.sharesPerSecret)
        guard dimension >= 1 else { throw .invalidParameter("the vector has no elements") }
        let key = EphemeralKeyPair.generate()
        var parameters = template
        parameters.neighbours = graph.degree
        parameters.coordinatorKey = Base64Bytes(key.publicKey)
        self.session = session
        self.round = round
        self.parameters = parameters
        self.dimension = dimension
        self.coordinatorKey = key
        self.identities = roster
        self.indices = indices
        self.graph = graph
        sum = [UInt64](repeating: 0, count: dimension)
        store = SecureBytes(count: indices.count * indices.count * 40)
        present = [Bool](repeating: false, count: indices.count * indices.count)
    }

    public var threshold: Int { parameters.threshold }
    public var roster: [Int] { indices }
    func position(of index: Int) -> Int { indices.firstIndex(of: index)! }
    func neighbours(of index: Int) -> [Int] { graph.neighbours(of: position(of: index)).map { indices[$0] } }
    func site(_ index: Int) -> String { identities[index]?.keyID ?? "index \(index)" }

    /// The sites asked to answer the current stage.
    public var expected: Set<Int> {
        switch stage {
        case .advertise: Set(indices)
        case .share: Set(completed[.advertise] ?? [])
        case .masked: Set(completed[.share] ?? [])
        case .consistency: Set(completed[.masked] ?? [])
        case .unmask: Set(completed[.consistency] ?? [])
        case .finished: []
        }
    }

    /// Whether every site asked has answered.
    public var isStageComplete: Bool { answered == expected }

    // MARK: - Submissions

    /// Checks and takes one site's answer to the current stage.
    ///
    /// - Throws: a one-line reason for a stale or wrong stage, a site not asked, a duplicate, or malformed content; the
    ///   round goes on without that answer.
    public func accept(_ submission: Submission, from index: Int) throws(FederatedError) {
        let name = site(index)
        guard submission.round == round else { throw .staleRound(site: name, got: submission.round, current: round) }
        guard submission.stage == stage else { throw .wrongStage(site: name, got: submission.stage.rawValue, current: stage.rawValue) }
        guard expected.contains(index) else { throw .notInRound("site \(name) was not asked for the \(stage.rawValue) stage of round \(round)") }
        guard !answered.contains(index) else { throw .duplicate("site \(name) already answered the \(stage.rawValue) stage of round \(round)") }
        switch stage {
        case .advertise: try acceptKeys(submission, from: index)
        case .share: try acceptShares(submission, from: index)
        case .masked: try acceptMasked(submission, from: index)
        case .consistency: try acceptSignature(submission, from: index)
        case .unmask: try acceptUnmasking(submission, from: index)
        case .finished: throw .wrongStage(site: name, got: submission.stage.rawValue, current: stage.rawValue)
        }
        answered.insert(index)
    }

    private func acceptKeys(_ s: Submission, from index: Int) throws(FederatedError) {
        guard let c = s.encryptionKey?.bytes, let m = s.maskKey?.bytes, let signature = s.keySignature?.bytes, c.count == 32, m.count == 32 else {
            throw .malformedMessage("site \(site(index)) sent no pair of 32-byte keys with a signature")
        }
        let identity = identities[index]!
        let message = SecAggSite.keysMessage(session: session, round: round, index: index, site: identity.keyID, encryptionKey: c, maskKey: m)
        guard SignatureVerifier.verifyEd25519(signature: signature, message: message, publicKey: identity.ed25519) else {
            throw .signatureInvalid("the round keys of site \(identity.keyID) are not signed by it")
        }
        keys[index] = AdvertisedKeys(index: index, encryptionKey: Base64Bytes(c), maskKey: Base64Bytes(m), signature: Base64Bytes(signature))
    }

    private func acceptShares(_ s: Submission, from index: Int) throws(FederatedError) {
        guard let list = s.boxes, let commitment = s.seedCommitment?.bytes, commitment.count == 32 else {
            throw .malformedMessage("site \(site(index)) sent no boxes of shares or no 32-byte seed commitment")
        }
        let wanted = Set(neighbours(of: index).filter { keys[$0] != nil })
        var seen = Set<Int>()
        let boxSize = ShareCipher.nonceSize + 88 + ShareCipher.tagSize
        for box in list {
            guard box.from == index, wanted.contains(box.to), seen.insert(box.to).inserted, box.box.bytes.count == boxSize else {
                throw .malformedMessage("site \(site(index)) sent a box of shares with the wrong sender, recipient, size, or twice")
            }
        }
        guard seen == wanted else { throw .malformedMessage("site \(site(index)) sent \(seen.count) boxes of shares, \(wanted.count) are due") }
        boxes[index] = list
        commitments[index] = commitment
    }

    private func acceptMasked(_ s: Submission, from index: Int) throws(FederatedError) {
        guard let bytes = s.vector?.bytes, bytes.count == dimension * 8 else {
            throw .malformedMessage("site \(site(index)) sent \((s.vector?.bytes.count ?? 0) / 8) elements, \(dimension) are due")
        }
        bytes.withUnsafeBytes { raw in
            sum.withUnsafeMutableBufferPointer { total in
                for j in 0..<dimension { total[j] &+= UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: j * 8, as: UInt64.self)) }
            }
        }
    }

    private func acceptSignature(_ s: Submission, from index: Int) throws(FederatedError) {
        let message = SecAggSite.consistencyMessage(session: session, round: round, masked: completed[.masked] ?? [])
        guard let signature = s.signature?.bytes,
            SignatureVerifier.verifyEd25519(signature: signature, message: message, publicKey: identities[index]!.ed25519)
        else { throw .signatureInvalid("site \(site(index)) did not sign the list of masked inputs") }
        signatures[index] = signature
    }

    private func acceptUnmasking(_ s: Submission, from index: Int) throws(FederatedError) {
        guard let box = s.sealedShares?.bytes, let peer = keys[index]?.encryptionKey.bytes else {
            throw .malformedMessage("site \(site(index)) sent no sealed shares")
        }
        let shared = try coordinatorKey.agree(with: peer)
        let key = KeyDerivation.derive(shared, label: "coffer/fl/v1/unmask", session: session, round: round, peer, coordinatorKey.publicKey)
        let ad = ShareCipher.associatedData(.unmask, session: session, round: round, sender: index, recipient: 0)
        guard let plaintext = ShareCipher.open(box, key: key, associatedData: ad) else {
            throw .tampered("the unmasking shares of site \(site(index)) do not authenticate")
        }
        let masked = Set(completed[.masked] ?? [])
        let sent = Set(completed[.share] ?? [])
        let mine = Set(neighbours(of: index))
        // Parse into positions first; store only once the whole submission is valid.
        let entries = try plaintext.withUnsafeBytes { (raw: UnsafeRawBufferPointer) throws(FederatedError) -> [(owner: Int, offset: Int)] in
            try Self.parseReleasedShares(
                raw,
                seeds: masked.intersection(mine.union([index])),
                keys: sent.subtracting(masked).intersection(mine),
                limit: indices.count,
                sender: site(index),
                name: site
            )
        }
        let holder = position(of: index)
        store.withUnsafeMutableBytes { out in
            plaintext.withUnsafeBytes { raw in
                for (owner, offset) in entries {
                    let slot = position(of: owner) * indices.count + holder
                    (out.baseAddress! + slot * 40).copyMemory(from: raw.baseAddress! + offset, byteCount: 40)
                    present[slot] = true
                }
            }
        }
    }

    /// Parses the plaintext of a site's unmasking shares: for the seeds, then for the mask keys, `u32le(count)` and
    /// `count` times `u32le(owner) || share (40 bytes)`, with nothing after. Each list must name exactly the owners due
    /// (`seeds`, `keys`), once each, and every share must be a valid point (``Shamir/validate(share:)``).
    ///
    /// - Parameters:
    ///   - limit: at most this many entries are read per list (the roster's size).
    ///   - sender: the sending site, and `name` the site of an index, for the refusals.
    /// - Returns: each share's owner and its offset in `raw`; `offset + 40 <= raw.count` for every one.
    /// - Throws: ``FederatedError/malformedShare(_:)`` naming what is wrong.
    package static func parseReleasedShares(
        _ raw: UnsafeRawBufferPointer,
        seeds: Set<Int>,
        keys: Set<Int>,
        limit: Int,
        sender: String,
        name: (Int) -> String
    ) throws(FederatedError) -> [(owner: Int, offset: Int)] {
        var entries: [(owner: Int, offset: Int)] = []
        var offset = 0
        func read() throws(FederatedError) -> Int {
            guard offset + 4 <= raw.count else { throw .malformedShare("site \(sender) sent a truncated list of shares") }
            defer { offset += 4 }
            return Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
        }
        for want in [seeds, keys] {
            let count = try read()
            var got = Set<Int>()
            for _ in 0..<min(count, limit) {
                let owner = try read()
                guard offset + 40 <= raw.count else { throw .malformedShare("site \(sender) sent a truncated share") }
                do throws(FederatedError) {
                    try Shamir.validate(share: UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + 40)]))
                } catch {
                    throw .malformedShare("site \(sender) sent a malformed share of site \(name(owner)): \(error.description)")
                }
                guard got.insert(owner).inserted else { throw .malformedShare("site \(sender) sent two shares of site \(name(owner))") }
                entries.append((owner, offset))
                offset += 40
            }
            guard got == want else {
                throw .malformedShare(
                    "site \(sender) released shares of \(got.count) sites, \(want.count) were due (seeds of survivors, keys of dropouts)"
                )
            }
        }
        guard offset == raw.count else { throw .malformedShare("site \(sender) sent bytes after its shares") }
        return entries
    }

    // MARK: - Stages

    /// Closes the current stage with the sites that answered, and opens the next.
    ///
    /// - Throws: ``FederatedError/roundAborted(round:reason:)`` when fewer than t sites answered.
    @discardableResult
    public func close() throws(FederatedError) -> Stage {
        guard stage != .finished else { return stage }
        let done = answered.sorted()
        guard done.count >= threshold else {
            let missing = expected.subtracting(answered).sorted().map(site)
            throw .roundAborted(
                round: round,
                reason:
                    "only \(done.count) of \(expected.count) sites answered the \(stage.rawValue) stage, the threshold is \(threshold) (no answer from \(missing.joined(separator: ", ")))"
            )
        }
        completed[stage] = done
        answered = []
        stage = Stage.allCases[stage.order + 1]
        if stage == .masked {
            // Only boxes whose sender and recipient both go on are forwarded; the rest are dropped now.
            boxes = boxes.filter { done.contains($0.key) }
        }
        if stage == .unmask { signatures = signatures.filter { done.contains($0.key) } }
        return stage
    }

    /// Fills the stage-specific fields of the task for site `index` in the current stage.
    public func fill(_ task: inout SiteTask, for index: Int) {
        switch stage {
        case .advertise: task.parameters = parameters
        case .share:
            // Its own keys and its neighbours', no others: forwarding every site's would cost m^2 key sets a round.
            let wanted = Set(neighbours(of: index)).union([index])
            task.keys = (completed[.advertise] ?? []).filter(wanted.contains).compactMap { keys[$0] }
        case .masked:
            task.survivors = completed[.share]
            task.boxes = (completed[.share] ?? []).compactMap { sender in boxes[sender]?.first { $0.to == index } }
        case .consistency: task.masked = completed[.masked]
        case .unmask:
            task.masked = completed[.masked]
            task.signatures = signatures.keys.sorted().map { IndexedSignature(index: $0, signature: Base64Bytes(signatures[$0]!)) }
        case .finished: break
        }
    }

    // MARK: - Unmasking

    /// The sum of the sites' vectors in Z_{2^64}, once the unmask stage has closed.
    ///
    /// - Throws: ``FederatedError/roundAborted(round:reason:)`` naming the site whose secret cannot be reconstructed.
    public func result() throws(FederatedError) -> [UInt64] {
        guard stage == .finished else { throw .roundAborted(round: round, reason: "the round was not complete") }
        let masked = completed[.masked] ?? []
        let dropped = Set(completed[.share] ?? []).subtracting(masked).sorted()
        // Every seed to remove (self-masks, then the pairwise masks of dropped sites) is reconstructed and checked first,
        // into sodium memory; then all the masks come off the sum in one pass, on every core.
        var pairs: [(dropped: Int, survivor: Int)] = []
        for owner in dropped where keys[owner] != nil {
            for survivor in neighbours(of: owner) where masked.contains(survivor) { pairs.append((owner, survivor)) }
        }
        let seeds = SecureBytes(count: (masked.count + pairs.count) * 32)
        var directions: [MaskExpander.Direction] = []
        for (i, owner) in masked.enumerated() {
            let seed = try reconstruct(owner, what: "mask seed") { (secret: borrowing SecureBytes) -> Bool in
                SecureCompare.equal(SecAggSite.seedCommitment(secret, session: session, round: round, index: owner), commitments[owner] ?? [])
            }
            seeds.withUnsafeMutableBytes { out in
                seed.withUnsafeBytes { (out.baseAddress! + i * 32).copyMemory(from: $0.baseAddress!, byteCount: 32) }
            }
            directions.append(.subtract)
        }
        var slot = masked.count
        for owner in dropped {
            let affected = neighbours(of: owner).filter { masked.contains($0) }
            guard !affected.isEmpty, let published = keys[owner]?.maskKey.bytes else { continue }
            let secret = try reconstruct(owner, what: "mask key") { (secret: borrowing SecureBytes) -> Bool in
                guard let pair = try? EphemeralKeyPair(secret: secret.slice(0..<32)) else { return false }
                return pair.publicKey == published
            }
            let pair = try EphemeralKeyPair(secret: secret)
            for survivor in affected {
                let other = keys[survivor]!.maskKey.bytes
                let shared = try pair.agree(with: other)
                let seed = KeyDerivation.derive(shared, label: "coffer/fl/v1/pairwise-mask", session: session, round: round, published, other)
                seeds.withUnsafeMutableBytes { out in
                    seed.withUnsafeBytes { (out.baseAddress! + slot * 32).copyMemory(from: $0.baseAddress!, byteCount: 32) }
                }
                slot += 1
                // The survivor added the mask if its index is below the dropped site's, and subtracted it otherwise.
                directions.append(survivor < owner ? .subtract : .add)
            }
        }
        var total = sum
        total.withUnsafeMutableBufferPointer { MaskExpander.apply(seeds: seeds, directions: directions, to: $0) }
        return total
    }

    /// Reconstructs `owner`'s secret from t of the shares released for it, trying other subsets when the result fails
    /// `check` (a site sent a wrong share).
    private func reconstruct(
        _ owner: Int,
        what: String,
        check: (borrowing SecureBytes) -> Bool
    ) throws(FederatedError) -> SecureBytes {
        let row = position(of: owner) * indices.count
        let holders = (0..<indices.count).filter { present[row + $0] }
        guard holders.count >= threshold else {
            throw .roundAborted(
                round: round,
                reason: "cannot unmask: \(holders.count) shares of the \(what) of site \(site(owner)) arrived, the threshold is \(threshold)"
            )
        }
        var subset = Array(0..<threshold)
        for _ in 0..<Self.reconstructionAttempts {
            let chosen = subset.map { holders[$0] }
            let shares = SecureBytes(count: threshold * 40)
            shares.withUnsafeMutableBytes { out in
                store.withUnsafeBytes { raw in
                    for (k, holder) in chosen.enumerated() {
                        (out.baseAddress! + k * 40).copyMemory(from: raw.baseAddress! + (row + holder) * 40, byteCount: 40)
                    }
                }
            }
            if let secret = try? Shamir.reconstruct(points: chosen.map { UInt32(indices[$0]) }, shares: shares), check(secret) { return secret }
            guard Self.nextCombination(&subset, of: holders.count) else { break }
        }
        throw .roundAborted(round: round, reason: "the shares of the \(what) of site \(site(owner)) do not reconstruct it: a site sent a wrong share")
    }

    /// Advances `subset` (ascending indices below `n`) to the next combination; false after the last.
    static func nextCombination(_ subset: inout [Int], of n: Int) -> Bool {
        let k = subset.count
        var i = k - 1
        while i >= 0 && subset[i] == n - k + i { i -= 1 }
        guard i >= 0 else { return false }
        subset[i] += 1
        for j in (i + 1)..<k { subset[j] = subset[j - 1] + 1 }
        return true
    }
}
