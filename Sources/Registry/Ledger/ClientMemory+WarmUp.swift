import CofferCrypto
import Foundation

extension ClientMemory {
    /// For a process about to fork commands (`coffer runner`): what every command on a registry does first, on made-up
    /// values. It signs and verifies a genesis record under a throwaway key, applies it to a state, and encodes that
    /// state as this memory writes it, then decodes it, with a pin (in memory: no file). The forks then find the Swift
    /// runtime's type and conformance lookups done: this ledger start took 3.6 ms of a 1 MiB push's 31 in a fork.
    ///
    /// It touches no file, no environment and no key but its own. Returns whether every step worked (a test checks it,
    /// so that a change of format cannot leave the warm-up doing nothing without notice).
    @discardableResult
    public static func warmUp() -> Bool {
        do {
            let root = try Identity.generate(name: "warm-up")
            let key = root.publicIdentity
            let genesis = LedgerRecord.sign(
                registry: key.keyID,
                seq: 1,
                prev: LedgerRecord.zeroHash,
                // A fixed time: formatting the clock's would have glibc read the time zone, and forks keep it.
                at: "2000-01-01T00:00:00.000Z",
                by: "registry",
                change: .genesis(key: key, owner: .init(name: "warm-up", identity: key)),
                signer: root
            )
            var state = LedgerState(registry: key.keyID)
            try state.apply(try LedgerRecord(envelope: genesis.envelope))
            let encoder = encoder()
            let remembered = try encoder.encode(Remembered(state: state, audit: nil, head: nil))
            let pins = try encoder.encode([key.keyID: "warm-up"])
            return try JSONDecoder().decode(Remembered.self, from: remembered).state == state
                && JSONDecoder().decode([String: String].self, from: pins).count == 1
        } catch {
            return false
        }
    }
}
