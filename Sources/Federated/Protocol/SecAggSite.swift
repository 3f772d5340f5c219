public import CofferCrypto
import Foundation

/// One site's side of one round of secure aggregation (Bonawitz et al. 2017, with the SecAgg+ neighbour graph of Bell
/// et al. 2020 when the round asks for one).
///
/// Every input is checked before it is used: keys must carry their owner's signature, boxes of shares must open under
/// the pairwise channel key with this round's associated data, lists of survivors must shrink stage by stage and stay
/// above the threshold, and the list of masked inputs must be signed by at least t sites before any share is released.
/// For each other site the coordinator gets from this site either the share of its mask seed (it survived) or the share
/// of its mask key (it dropped), never both. Secrets (two X25519 secret keys, the mask seed, the shares received, the
/// encoded input) live in sodium memory.
///
/// ```swift
/// let site = try SecAggSite(session: id, round: 1, me: 2, roster: roster, identities: ids, parameters: p)
/// let advertise = site.advertise(signedBy: identity)
/// ```
public final class SecAggSite {
    public let session: [UInt8]
    public let round: Int
    /// This site's index (its Shamir point).
    public let me: Int
    public let parameters: RoundParameters
    /// Identities of the roster, by index.
    let identities: [Int: PublicIdentity]
    /// Roster indices in roster order; position p of the neighbour graph is `indices[p]`.
    let indices: [Int]
    let graph: NeighbourGraph
    let encryption: EphemeralKeyPair
    let masking: EphemeralKeyPair
    /// b_u: the seed of this site's self-mask.
    let seed: SecureBytes
    /// Shares held, 80 bytes per roster position: mask-key share (40) || seed share (40).
    let held: SecureBytes
    /// Reused for each neighbour: an X25519 shared point (32) then the key derived from it (32), then a box's
    /// plaintext (88). One guarded allocation per neighbour and key cost more than the cryptography itself (on 50
    /// simulated sites, a third of the CPU went to mapping and unmapping sodium_malloc's pages).
    let scratch = SecureBytes(count: 64 + 88)
    /// K_uv of each roster position once derived: the share stage derives it to seal the box to v, the masked stage
    /// needs the same key to open v's box (one X25519 per neighbour and round instead of two).
    let channels: SecureBytes
    private var channelKnown: [Bool]
    private(set) var heldFrom = Set<Int>()
    private(set) var keys: [Int: AdvertisedKeys] = [:]
    private(set) var survivors: [Int] = []
    private(set) var signedList: [Int]?
    private(set) var released = false

    public init(session: [UInt8], round: Int, me: Int, roster: [Int: PublicIdentity], parameters: RoundParameters) throws(FederatedError) {
        guard session.count == 16 else { throw .malformedMessage("a session id is 16 bytes") }
        // Signatures, associated data and derivations carry the round as u32le: a round the coordinator names outside
        // it is refused here, before anything converts it (it trapped the site: the fl-message fuzz target).
        guard (0...Int(UInt32.max)).contains(round) else { throw .malformedMessage("round \(round) is not a 32-bit round number") }
        let indices = roster.keys.sorted()
        guard indices.contains(me) else { throw .notInRound("this site is not in the roster of round \(round)") }
        guard indices.allSatisfy({ $0 >= 1 && $0 <= UInt32.max }) else { throw .malformedMessage("roster indices must be positive") }
        let graph = try NeighbourGraph(size: indices.count, neighbours: parameters.neighbours)
        guard graph.degree == parameters.neighbours else {
            throw .invalidParameter("the round names \(parameters.neighbours) neighbours, a roster of \(indices.count) gives \(graph.degree)")
        }
        try Self.checkThreshold(parameters.threshold, shares: graph.sharesPerSecret)
        guard parameters.coordinatorKey.bytes.count == 32 else { throw .malformedMessage("the coordinator key is not 32 bytes") }
        self.session = session
        self.round = round
        self.me = me
        self.parameters = parameters
        self.identities = roster
        self.indices = indices
        self.graph = graph
        encryption = EphemeralKeyPair.generate()
        masking = EphemeralKeyPair.generate()
        seed = SecureBytes.random(count: 32)
        held = SecureBytes(count: indices.count * 80)
        channels = SecureBytes(count: indices.count * 32)
        channelKnown = [Bool](repeating: false, count: indices.count)
    }

    /// A threshold must exceed half the shares (so that the shares the coordinator can collect for one site's seed and
    /// for its mask key never both reach it) and be at most their number.
    static func checkThreshold(_ t: Int, shares: Int) throws(FederatedError) {
        guard t >= 2, t <= shares, 2 * t > shares else {
            throw .invalidParameter(
                "threshold \(t) with \(shares) shares per secret: it must be more than half of them, at least 2, and at most \(shares)"
            )
        }
    }

    var position: Int { indices.firstIndex(of: me)! }
    func position(of index: Int) -> Int? { indices.firstIndex(of: index) }
    /// Roster indices of this site's neighbours.
    var neighbourIndices: [Int] { graph.neighbours(of: position).map { indices[$0] } }

    // MARK: - Stage advertise

    /// What `"coffer/fl/v1/keys"` signatures cover.
    static func keysMessage(session: [UInt8], round: Int, index: Int, site: String, encryptionKey: [UInt8], maskKey: [UInt8]) -> [UInt8] {
        var m = Array("coffer/fl/v1/keys".utf8) + session
        for v in [UInt32(round), UInt32(index)] { m += withUnsafeBytes(of: v.littleEndian, Array.init) }
        return m + Array(site.utf8) + encryptionKey + maskKey
    }

    /// The two public keys, signed by the site's identity.
    public func advertise(signedBy identity: borrowing Identity, into submission: inout Submission) {
        let message = Self.keysMessage(
            session: session,
            round: round,
            index: me,
            site: identity.publicIdentity.keyID,
            encryptionKey: encryption.publicKey,
            maskKey: masking.publicKey
        )
        submission.encryptionKey = Base64Bytes(encryption.publicKey)
        submission.maskKey = Base64Bytes(masking.publicKey)
        submission.keySignature = Base64Bytes(identity.signEd25519(message))
    }

    // MARK: - Stage share

    /// Checks the signed keys of its neighbours that advertised (and its own), the only ones the coordinator forwards,
    /// then splits this site's mask key and seed among those neighbours and itself, and encrypts each neighbour's pair of
    /// shares to it.
    public func share(keys advertised: [AdvertisedKeys], into submission: inout Submission) throws(FederatedError) {
        let neighbours = Set(neighbourIndices)
        var keys: [Int: AdvertisedKeys] = [:]
        for entry in advertised {
            guard let identity = identities[entry.index] else { throw .malformedMessage("keys for index \(entry.index), which is not in the roster") }
            guard keys[entry.index] == nil else { throw .duplicate("two sets of keys for site \(identity.keyID)") }
            guard entry.index == me || neighbours.contains(entry.index) else {
                throw .malformedMessage("keys for site \(identity.keyID), which is not a neighbour")
            }
            guard entry.encryptionKey.bytes.count == 32, entry.maskKey.bytes.count == 32 else {
                throw .malformedMessage("the keys of site \(identity.keyID) are not 32 bytes")
            }
            let message = Self.keysMessage(
                session: session,
                round: round,
                index: entry.index,
                site: identity.keyID,
                encryptionKey: entry.encryptionKey.bytes,
                maskKey: entry.maskKey.bytes
            )
            guard SignatureVerifier.verifyEd25519(signature: entry.signature.bytes, message: message, publicKey: identity.ed25519) else {
                throw .signatureInvalid("the round keys forwarded for site \(identity.keyID) are not signed by it")
            }
            keys[entry.index] = entry
        }
        guard keys[me]?.encryptionKey.bytes == encryption.publicKey, keys[me]?.maskKey.bytes == masking.publicKey else {
            throw .tampered("the keys forwarded for this site are not the ones it advertised")
        }
        self.keys = keys
        let recipients = neighbourIndices.filter { keys[$0] != nil }
        let points = (recipients + [me]).sorted()
        guard points.count >= parameters.threshold else {
            throw .notInRound(
                "only \(recipients.count) neighbours advertised keys: \(points.count) shares cannot reach the threshold \(parameters.threshold)"
            )
        }
        let maskShares = masking.withSecret { Shamir.split($0, threshold: parameters.threshold, points: points.map { UInt32($0) }) }
        let seedShares = Shamir.split(seed, threshold: parameters.threshold, points: points.map { UInt32($0) })
        var boxes: [ShareBox] = []
        for (j, index) in points.enumerated() {
            let box: [UInt8]? = try scratch.withUnsafeMutableBytes { (raw) throws(FederatedError) -> [UInt8]? in
                let plaintext = UnsafeMutableRawBufferPointer(rebasing: raw[64..<152])
                plaintext.storeBytes(of: UInt32(me).littleEndian, toByteOffset: 0, as: UInt32.self)
                plaintext.storeBytes(of: UInt32(index).littleEndian, toByteOffset: 4, as: UInt32.self)
                maskShares.withUnsafeBytes { (plaintext.baseAddress! + 8).copyMemory(from: $0.baseAddress! + j * 40, byteCount: 40) }
                seedShares.withUnsafeBytes { (plaintext.baseAddress! + 48).copyMemory(from: $0.baseAddress! + j * 40, byteCount: 40) }
                if index == me {
                    keep(UnsafeRawBufferPointer(plaintext), from: me)
                    return nil
                }
                try channelKey(with: index, into: raw.baseAddress!)
                let ad = ShareCipher.associatedData(.shares, session: session, round: round, sender: me, recipient: index)
                return ShareCipher.seal(UnsafeRawBufferPointer(plaintext), key: raw.baseAddress! + 32, associatedData: ad)
            }
            if let box { boxes.append(ShareBox(from: me, to: index, box: Base64Bytes(box))) }
        }
        submission.boxes = boxes
        submission.seedCommitment = Base64Bytes(Self.seedCommitment(seed, session: session, round: round, index: me))
    }

    /// `BLAKE2b-256(key: b_u, "coffer/fl/v1/seed-commitment" || session || u32le(round) || u32le(index))`.
    static func seedCommitment(_ seed: borrowing SecureBytes, session: [UInt8], round: Int, index: Int) -> [UInt8] {
        var m = Array("coffer/fl/v1/seed-commitment".utf8) + session
        for v in [UInt32(round), UInt32(index)] { m += withUnsafeBytes(of: v.littleEndian, Array.init) }
        return KeyDerivation.mac(key: seed, m)
    }

    /// The key of the channel between this site and `index` (from X25519 of the two encryption keys), written to
    /// `scratch + 32`; the shared point goes through `scratch`.
    func channelKey(with index: Int, into scratch: UnsafeMutableRawPointer) throws(FederatedError) {
        guard let peer = keys[index]?.encryptionKey.bytes, let slot = position(of: index) else {
            throw .notInRound("no keys for site index \(index)")
        }
        if channelKnown[slot] {
            channels.withUnsafeBytes { (scratch + 32).copyMemory(from: $0.baseAddress! + slot * 32, byteCount: 32) }
            return
        }
        try encryption.agree(with: peer, into: scratch)
        KeyDerivation.derive(
            key: scratch,
            label: "coffer/fl/v1/channel",
            session: session,
            round: round,
            encryption.publicKey,
            peer,
            into: scratch + 32
        )
        channels.withUnsafeMutableBytes { ($0.baseAddress! + slot * 32).copyMemory(from: scratch + 32, byteCount: 32) }
        channelKnown[slot] = true
    }

    /// Copies an 88-byte share plaintext's two shares into the slot of `sender`.
    private func keep(_ plaintext: UnsafeRawBufferPointer, from sender: Int) {
        let slot = position(of: sender)! * 80
        held.withUnsafeMutableBytes { out in (out.baseAddress! + slot).copyMemory(from: plaintext.baseAddress! + 8, byteCount: 80) }
        heldFrom.insert(sender)
    }

    // MARK: - Stage masked

    /// Opens the boxes addressed to this site (refusing any that does not authenticate), then masks `input` (the encoded
    /// vector, in place) with its self-mask and a pairwise mask for each neighbour that sent shares.
    ///
    /// - Returns: the masked vector as it is sent (u64 little-endian), which reveals nothing without the masks.
    public func mask(
        survivors: [Int],
        boxes: [ShareBox],
        input: borrowing SecureBytes,
        expander: MaskExpander
    ) throws(FederatedError) -> [UInt8] {
        let u2 = Set(survivors)
        // The keys this site holds are its neighbours' (and its own): a neighbour counted here must be one of them.
        guard u2.count == survivors.count, u2.isSubset(of: Set(identities.keys)),
            Set(neighbourIndices).union([me]).intersection(u2).isSubset(of: Set(keys.keys))
        else {
            throw .malformedMessage(
                "the list of sites that sent shares repeats a site, or names one outside the roster or a neighbour that advertised no keys"
            )
        }
        guard u2.contains(me) else { throw .notInRound("the coordinator did not count this site's shares") }
        guard u2.count >= parameters.threshold else {
            throw .notInRound("only \(u2.count) sites sent shares, fewer than the threshold \(parameters.threshold)")
        }
        let expected = Set(neighbourIndices).intersection(u2)
        var seen = Set<Int>()
        for box in boxes {
            guard box.to == me else { throw .tampered("a box of shares addressed to site index \(box.to) was delivered here") }
            guard expected.contains(box.from) else {
                throw .malformedMessage("a box of shares from site index \(box.from), which is not a neighbour that sent shares")
            }
            guard seen.insert(box.from).inserted else { throw .duplicate("two boxes of shares from site index \(box.from)") }
            let site = identities[box.from]!.keyID
            let ad = ShareCipher.associatedData(.shares, session: session, round: round, sender: box.from, recipient: me)
            try scratch.withUnsafeMutableBytes { (raw) throws(FederatedError) in
                try channelKey(with: box.from, into: raw.baseAddress!)
                let plaintext = UnsafeMutableRawBufferPointer(rebasing: raw[64..<152])
                guard ShareCipher.open(box.box.bytes, key: raw.baseAddress! + 32, associatedData: ad, into: plaintext) else {
                    throw .tampered(
                        "the shares from site \(site) do not authenticate: the coordinator or the network altered, replayed or misrouted them"
                    )
                }
                let from = UInt32(littleEndian: plaintext.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
                let to = UInt32(littleEndian: plaintext.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
                guard from == box.from, to == me else { throw .tampered("the shares from site \(site) name another sender or recipient") }
                try Shamir.validate(share: UnsafeRawBufferPointer(rebasing: plaintext[8..<48]))
                try Shamir.validate(share: UnsafeRawBufferPointer(rebasing: plaintext[48..<88]))
                keep(UnsafeRawBufferPointer(plaintext), from: box.from)
            }
        }
        guard seen == expected else {
            let missing = expected.subtracting(seen).sorted().map { identities[$0]!.keyID }
            throw .tampered("the coordinator withheld the shares of \(missing.joined(separator: ", "))")
        }
        self.survivors = survivors.sorted()
        let count = input.count / 8
        guard input.count == count * 8 else { throw .malformedMessage("the encoded input is not whole 64-bit elements") }
        // The self-mask's seed, then each pairwise seed, in sodium memory; the masks go onto the vector in one pass.
        let peers = expected.sorted()
        let seeds = SecureBytes(count: (1 + peers.count) * 32)
        var directions: [MaskExpander.Direction] = [.add]
        try seeds.withUnsafeMutableBytes { (out) throws(FederatedError) in
            seed.withUnsafeBytes { out.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: 32) }
            for (i, peer) in peers.enumerated() {
                try scratch.withUnsafeMutableBytes { (raw) throws(FederatedError) in
                    try pairwiseSeed(with: peer, into: raw.baseAddress!)
                    (out.baseAddress! + (1 + i) * 32).copyMemory(from: raw.baseAddress! + 32, byteCount: 32)
                }
                directions.append(me < peer ? .add : .subtract)
            }
        }
        input.withUnsafeMutableBytes { raw in
            seeds.withUnsafeBytes { expander.apply(seeds: $0.baseAddress!, directions: directions, to: raw.bindMemory(to: UInt64.self)) }
        }
        return input.withUnsafeBytes { raw in
            [UInt8](unsafeUninitializedCapacity: raw.count) { out, initialized in
                let elements = raw.bindMemory(to: UInt64.self)
                for j in elements.indices {
                    UnsafeMutableRawPointer(out.baseAddress!).storeBytes(of: elements[j].littleEndian, toByteOffset: j * 8, as: UInt64.self)
                }
                initialized = raw.count
            }
        }
    }

    /// s_{u,v}: the seed of the pairwise mask with `peer` (from X25519 of the two mask keys), written to `scratch + 32`.
    func pairwiseSeed(with peer: Int, into scratch: UnsafeMutableRawPointer) throws(FederatedError) {
        guard let other = keys[peer]?.maskKey.bytes else { throw .notInRound("no mask key for site index \(peer)") }
        try masking.agree(with: other, into: scratch)
        KeyDerivation.derive(
            key: scratch,
            label: "coffer/fl/v1/pairwise-mask",
            session: session,
            round: round,
            masking.publicKey,
            other,
            into: scratch + 32
        )
    }

    // MARK: - Stage consistency

    /// What consistency signatures cover: `"coffer/fl/v1/consistency" || session || u32le(round) || u32le(count) || u32le(index)...`.
    static func consistencyMessage(session: [UInt8], round: Int, masked: [Int]) -> [UInt8] {
        var m = Array("coffer/fl/v1/consistency".utf8) + session
        for v in [UInt32(round), UInt32(masked.count)] + masked.map({ UInt32($0) }) { m += withUnsafeBytes(of: v.littleEndian, Array.init) }
        return m
    }

    /// Signs the list of sites whose masked inputs the coordinator says it has (once per round).
    public func signConsistency(masked: [Int], by identity: borrowing Identity) throws(FederatedError) -> [UInt8] {
        let list = masked.sorted()
        try checkMaskedList(list)
        if let signedList, signedList != list { throw .tampered("the coordinator asked this site to sign two different lists of masked inputs") }
        signedList = list
        return identity.signEd25519(Self.consistencyMessage(session: session, round: round, masked: list))
    }

    private func checkMaskedList(_ list: [Int]) throws(FederatedError) {
        guard Set(list).count == list.count, Set(list).isSubset(of: Set(survivors)) else {
            throw .malformedMessage("the list of masked inputs repeats a site or names one that did not send shares")
        }
        guard list.contains(me) else { throw .notInRound("the coordinator did not count this site's masked input") }
        guard list.count >= parameters.threshold else {
            throw .notInRound("only \(list.count) masked inputs arrived, fewer than the threshold \(parameters.threshold)")
        }
    }

    // MARK: - Stage unmask

    /// After checking that at least t sites signed the same list of masked inputs, releases, sealed to the coordinator:
    /// the seed share of each listed site this site holds a share of, and the mask-key share of each neighbour that sent
    /// shares but no masked input. Only once per round.
    public func unmask(masked: [Int], signatures: [IndexedSignature]) throws(FederatedError) -> [UInt8] {
        let list = masked.sorted()
        guard let signedList, signedList == list else { throw .tampered("the list to unmask is not the one this site signed") }
        guard !released else { throw .duplicate("the coordinator asked this site to unmask round \(round) twice") }
        let message = Self.consistencyMessage(session: session, round: round, masked: list)
        var valid = Set<Int>()
        // t valid signatures from distinct members of U3 are what is required: checking more only costs (m^2 Ed25519
        // verifications a round over the sites).
        for entry in signatures where list.contains(entry.index) && valid.count < parameters.threshold {
            guard let identity = identities[entry.index] else { continue }
            if SignatureVerifier.verifyEd25519(signature: entry.signature.bytes, message: message, publicKey: identity.ed25519) {
                valid.insert(entry.index)
            }
        }
        guard valid.count >= parameters.threshold else {
            throw .tampered("only \(valid.count) sites signed the list of masked inputs, fewer than the threshold \(parameters.threshold)")
        }
        released = true
        let maskedSet = Set(list)
        let seedOf = heldFrom.filter { maskedSet.contains($0) }.sorted()
        let keyOf = heldFrom.filter { !maskedSet.contains($0) && survivors.contains($0) && $0 != me }.sorted()
        let plaintext = SecureBytes(count: 8 + (seedOf.count + keyOf.count) * 44)
        plaintext.withUnsafeMutableBytes { out in
            var offset = 0
            func put(_ value: Int) {
                out.storeBytes(of: UInt32(value).littleEndian, toByteOffset: offset, as: UInt32.self)
                offset += 4
            }
            for (list, shareOffset) in [(seedOf, 40), (keyOf, 0)] {
                put(list.count)
                for index in list {
                    put(index)
                    let slot = position(of: index)! * 80 + shareOffset
                    held.withUnsafeBytes { (out.baseAddress! + offset).copyMemory(from: $0.baseAddress! + slot, byteCount: 40) }
                    offset += 40
                }
            }
        }
        let shared = try encryption.agree(with: parameters.coordinatorKey.bytes)
        let key = KeyDerivation.derive(
            shared,
            label: "coffer/fl/v1/unmask",
            session: session,
            round: round,
            encryption.publicKey,
            parameters.coordinatorKey.bytes
        )
        let ad = ShareCipher.associatedData(.unmask, session: session, round: round, sender: me, recipient: 0)
        return ShareCipher.seal(plaintext, key: key, associatedData: ad)
    }
}
