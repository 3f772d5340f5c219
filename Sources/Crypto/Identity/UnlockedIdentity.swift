/// An identity unlocked once and shared, by reference, between the places that sign with it: a server holds the
/// registry's for its life, a command holds the one it unlocked for its run. The keys stay in sodium memory and
/// are wiped when the last reference goes.
public final class UnlockedIdentity: @unchecked Sendable {
    // Read-only after init; Identity's signing and unwrapping only read its key bytes.
    public let identity: Identity
    public init(_ identity: consuming Identity) { self.identity = identity }
    public var publicIdentity: PublicIdentity { identity.publicIdentity }
}
