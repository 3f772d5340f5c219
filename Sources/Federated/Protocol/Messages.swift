public import CofferTraining
import Foundation

/// The stages of one round of secure aggregation, in order, and the end of the federation.
public enum Stage: String, Codable, Sendable, CaseIterable, Comparable {
    /// Task: the global model and the roster; the site trains, then submits its two X25519 public keys, signed.
    case advertise
    /// Task: every site's signed keys; the site submits its shares, each encrypted to its recipient.
    case share
    /// Task: the shares addressed to the site; the site submits its masked input.
    case masked
    /// Task: the sites whose masked inputs arrived; the site signs that list.
    case consistency
    /// Task: the signed list; the site submits, sealed to the coordinator, the shares needed to unmask.
    case unmask
    /// Task: the federation is over (final model and report); nothing is submitted.
    case finished

    var order: Int { Stage.allCases.firstIndex(of: self)! }
    public static func < (a: Stage, b: Stage) -> Bool { a.order < b.order }
}

/// One site of a round: its index (its Shamir point, 1-based, in key-ID order) and its public identity file.
public struct RosterEntry: Codable, Sendable, Equatable {
    public var index: Int
    public var site: String
    /// The site's `NAME.pub` bytes (docs/FORMAT.md, "Identity files"), so that the key ID can be checked.
    public var identity: Base64Bytes
}

/// What a round computes, and how its vectors are encoded and protected.
public struct RoundParameters: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// Round 0: per-feature counts, sums and sums of squares, for standardisation (exact fixed point).
        case statistics
        /// Rounds 1...: weighted model updates (quantized with stochastic rounding).
        case update
    }

    public var kind: Kind
    /// t: shares needed to reconstruct any secret of the round.
    public var threshold: Int
    /// k: neighbours per site (`roster size - 1` is the complete graph).
    public var neighbours: Int
    /// c: update coordinates are clipped to [-c, c] before quantization.
    public var clipRange: Double
    /// b: quantization bits.
    public var bits: Int
    /// `fedavg` or `dp-fedavg`.
    public var mechanism: String
    /// S: with `dp-fedavg`, each site clips its whole update to this L2 norm and sends weight 1.
    public var clipNorm: Double?
    /// The coordinator's X25519 public key for this round: unmasking shares are sealed to it.
    public var coordinatorKey: Base64Bytes

    enum CodingKeys: String, CodingKey {
        case kind, threshold, neighbours, bits, mechanism
        case clipRange = "clip_range"
        case clipNorm = "clip_norm"
        case coordinatorKey = "coordinator_key"
    }
}

/// A site's signed per-round public keys, forwarded by the coordinator to every site of the round.
public struct AdvertisedKeys: Codable, Sendable, Equatable {
    public var index: Int
    /// X25519 public key for the channel keys (c_u).
    public var encryptionKey: Base64Bytes
    /// X25519 public key for the pairwise masks (s_u).
    public var maskKey: Base64Bytes
    /// Ed25519 by the site's identity over ``SecAggSite/keysMessage``.
    public var signature: Base64Bytes

    enum CodingKeys: String, CodingKey {
        case index, signature
        case encryptionKey = "encryption_key"
        case maskKey = "mask_key"
    }
}

/// One encrypted box of shares from one site to another.
public struct ShareBox: Codable, Sendable, Equatable {
    public var from: Int
    public var to: Int
    public var box: Base64Bytes
}

/// One site's signature over the list of sites whose masked inputs arrived.
public struct IndexedSignature: Codable, Sendable, Equatable {
    public var index: Int
    public var signature: Base64Bytes
}

/// How the previous round ended, told to the sites with the next task.
public struct RoundOutcome: Codable, Sendable, Equatable {
    public var round: Int
    /// `ok`, `aborted` or `skipped`.
    public var outcome: String
    public var reason: String?
    public var sites: Int
}

// MARK: - Site to coordinator

/// `POST /v1/fl/join`: a site asks to take part, naming the recipe and features it trains with.
public struct JoinRequest: Codable, Sendable, Equatable {
    public var type = "coffer.fl.v1.join"
    /// The session the site joins, as `GET /v1/fl/status` names it: a join recorded in one federation is refused by
    /// every other (helper-47: a replayed join made a coordinator count a site that was not there).
    public var session: String
    public var site: String
    /// SHA-256 (hex) of the recipe's canonical JSON without `data` (``FederatedRecipe/digest``).
    public var recipeDigest: String
    public var features: [String]
    public var tasks: [String]

    enum CodingKeys: String, CodingKey {
        case type, session, site, features, tasks
        case recipeDigest = "recipe_digest"
    }
}

/// `POST /v1/fl/poll`: a site waits for its next task, the first with a sequence number above `after`.
public struct PollRequest: Codable, Sendable, Equatable {
    public var type = "coffer.fl.v1.poll"
    public var session: String
    public var site: String
    public var after: Int
}

/// `POST /v1/fl/submit`: a site's answer to the task of one stage.
public struct Submission: Codable, Sendable, Equatable {
    public var type = "coffer.fl.v1.submit"
    public var session: String
    public var site: String
    public var round: Int
    public var stage: Stage
    // advertise
    public var encryptionKey: Base64Bytes?
    public var maskKey: Base64Bytes?
    public var keySignature: Base64Bytes?
    // share
    public var boxes: [ShareBox]?
    /// BLAKE2b-256(key: b_u, ``SecAggSite/commitmentLabel`` ...): lets the coordinator check a reconstructed seed.
    public var seedCommitment: Base64Bytes?
    // masked
    /// u64 little-endian elements of Z_{2^64}: the masked, encoded vector.
    public var vector: Base64Bytes?
    // consistency
    public var signature: Base64Bytes?
    // unmask
    /// The shares the coordinator asked for, sealed to the round's coordinator key (``ShareCipher``).
    public var sealedShares: Base64Bytes?

    public init(session: String, site: String, round: Int, stage: Stage) {
        self.session = session
        self.site = site
        self.round = round
        self.stage = stage
    }

    enum CodingKeys: String, CodingKey {
        case type, session, site, round, stage, boxes, vector, signature
        case encryptionKey = "encryption_key"
        case maskKey = "mask_key"
        case keySignature = "key_signature"
        case seedCommitment = "seed_commitment"
        case sealedShares = "sealed_shares"
    }
}

// MARK: - Coordinator to site

/// The answer to a join: the session the site is now part of.
public struct Welcome: Codable, Sendable, Equatable {
    public var type = "coffer.fl.v1.welcome"
    public var session: String
    public var site: String
    public var recipeDigest: String
    public var rounds: Int
    public var mechanism: String

    enum CodingKeys: String, CodingKey {
        case type, session, site, rounds, mechanism
        case recipeDigest = "recipe_digest"
    }
}

/// The coordinator's acknowledgement of a submission.
public struct Acknowledgement: Codable, Sendable, Equatable {
    public var type = "coffer.fl.v1.ack"
    public var session: String
    public var site: String
    public var round: Int
    public var stage: Stage
}

/// What a site is to do next.
public struct SiteTask: Codable, Sendable, Equatable {
    public var type = "coffer.fl.v1.task"
    public var session: String
    public var site: String
    /// Increases with every task the coordinator issues.
    public var seq: Int
    public var round: Int
    public var stage: Stage
    public var previous: RoundOutcome?
    // advertise
    public var roster: [RosterEntry]?
    public var parameters: RoundParameters?
    /// f32 little-endian parameters of the global model (update rounds and `finished`).
    public var model: Base64Bytes?
    public var standardisation: PublicStandardisation?
    // share
    public var keys: [AdvertisedKeys]?
    // masked
    /// U2: the sites whose shares were forwarded.
    public var survivors: [Int]?
    public var boxes: [ShareBox]?
    // consistency and unmask
    /// U3: the sites whose masked inputs arrived.
    public var masked: [Int]?
    public var signatures: [IndexedSignature]?
    // finished
    public var summary: String?

    public init(session: String, site: String, seq: Int, round: Int, stage: Stage) {
        self.session = session
        self.site = site
        self.seq = seq
        self.round = round
        self.stage = stage
    }

    enum CodingKeys: String, CodingKey {
        case type, session, site, seq, round, stage, previous, roster, parameters, model, standardisation, keys, survivors, boxes, masked
        case signatures, summary
    }
}

extension [Float] {
    /// f32 little-endian bytes.
    var littleEndianBytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: count * 4)
        out.withUnsafeMutableBytes { raw in
            for (i, value) in enumerated() { raw.storeBytes(of: value.bitPattern.littleEndian, toByteOffset: i * 4, as: UInt32.self) }
        }
        return out
    }

    init?(littleEndianBytes bytes: [UInt8]) {
        guard bytes.count % 4 == 0 else { return nil }
        self = bytes.withUnsafeBytes { raw in
            (0..<(bytes.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
        }
        guard allSatisfy(\.isFinite) else { return nil }
    }
}

extension [UInt64] {
    /// u64 little-endian bytes.
    var littleEndianBytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: count * 8)
        out.withUnsafeMutableBytes { raw in
            for (i, value) in enumerated() { raw.storeBytes(of: value.littleEndian, toByteOffset: i * 8, as: UInt64.self) }
        }
        return out
    }

    init?(littleEndianBytes bytes: [UInt8]) {
        guard bytes.count % 8 == 0 else { return nil }
        self = bytes.withUnsafeBytes { raw in
            (0..<(bytes.count / 8)).map { UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self)) }
        }
    }
}
