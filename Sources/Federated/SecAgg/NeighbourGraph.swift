/// Who masks with whom and who holds whose shares in one round: the complete graph (Bonawitz et al. 2017) or, for
/// SecAgg+ (Bell et al. 2020), a ring in which each site is joined to the k/2 sites on either side of it in the
/// roster's order (a Harary graph, as Flower's SecAgg+ builds). Each site's secrets are split into one share per
/// neighbour plus one it keeps, so `sharesPerSecret = degree + 1`.
public struct NeighbourGraph: Sendable, Equatable {
    /// Sites in the round.
    public let size: Int
    /// Neighbours per site: `size - 1` for the complete graph.
    public let degree: Int

    /// - Parameter neighbours: even k >= 2 for a ring, or 0 for the complete graph; a k of `size - 1` or more is the
    ///   complete graph.
    public init(size: Int, neighbours: Int) throws(FederatedError) {
        guard size >= 2 else { throw .invalidParameter("a round needs at least 2 sites, got \(size)") }
        guard neighbours >= 0 else { throw .invalidParameter("neighbours must be >= 0, got \(neighbours)") }
        self.size = size
        if neighbours == 0 || neighbours >= size - 1 {
            degree = size - 1
        } else {
            guard neighbours % 2 == 0 else { throw .invalidParameter("neighbours must be even (k/2 on each side of a ring), got \(neighbours)") }
            degree = neighbours
        }
    }

    public var isComplete: Bool { degree == size - 1 }
    public var sharesPerSecret: Int { degree + 1 }

    /// Positions (0-based, in roster order) of the neighbours of position `i`, ascending.
    public func neighbours(of i: Int) -> [Int] {
        if isComplete { return (0..<size).filter { $0 != i } }
        var out = Set<Int>()
        for offset in 1...(degree / 2) {
            out.insert((i + offset) % size)
            out.insert((i - offset + size) % size)
        }
        return out.sorted()
    }
}
