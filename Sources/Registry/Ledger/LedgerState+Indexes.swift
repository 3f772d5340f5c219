/// What a walk along the chain knows from a state: the hashes it vouches for, and whether it has its indexes (the
/// waypoints and the recorded versions, ``LedgerState/withIndexes(waypoints:versions:)``).
extension LedgerState {
    /// Whether this state was remembered before the waypoints or the recorded versions were kept: one read of the chain
    /// fills them in (``RemoteLedger/filledIndexes(_:from:location:)``).
    public var lacksIndexes: Bool { waypoints == nil || recordedVersionKeys == nil }

    /// The hash of record `seq` if it is a waypoint or the last record (nil otherwise).
    public func knownHash(at seq: Int64) -> String? {
        if seq == self.seq { return hash }
        guard seq > 0, seq < self.seq, seq % Self.waypointInterval == 0, let waypoints, Int(seq / Self.waypointInterval) <= waypoints.count
        else { return nil }
        return waypoints[Int(seq / Self.waypointInterval) - 1]
    }

    /// Whether this state should replace `remembered` as what a client keeps: it is further on, or as far with the
    /// indexes `remembered` lacks.
    public func supersedes(_ remembered: LedgerState) -> Bool {
        remembered.seq < seq || (remembered.seq == seq && remembered.lacksIndexes && !lacksIndexes)
    }
}
