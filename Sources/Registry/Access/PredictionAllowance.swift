/// The predictions a principal's limited inference grants allow a new session, read from the principal's sessions.
///
/// A grant's predictions are spent by the uses of the sessions opened under it since it was recorded, and held by the
/// whole limit of those still open. The same value decides twice: before the model is decrypted (to refuse early), and
/// inside the commit that adds the session, on the sessions as they are then (``UnitOfWork/HoldingCheck``).
struct PredictionAllowance: Sendable {
    struct Limited: Sendable {
        var grant: Grant
        /// When the grant's limits were recorded: sessions opened before it spent an earlier grant.
        var since: String
    }

    var principal: String
    /// Every grant allowing the session; each has a `maxPredictions`.
    var grants: [Limited]
    /// The time the session is opened at (a registry timestamp): sessions expired by then hold only their uses.
    var at: String

    /// The grant with the most predictions left, and how many, given the principal's `sessions`.
    func best(given sessions: [SessionRow]) -> (grant: Grant, left: Int) {
        var best: (grant: Grant, left: Int)? = nil
        for limited in grants {
            var spent = 0
            for row in sessions where row.session.createdAt >= limited.since && limited.grant.covers(model: row.model, alias: row.session.alias) {
                let s = row.session
                let open = s.revokedAt == nil && s.wrappedKey != nil && s.expiresAt > at
                spent += open ? max(s.maxUses ?? 0, s.uses) : s.uses
            }
            let left = max(0, limited.grant.maxPredictions! - spent)
            if best == nil || left > best!.left { best = (limited.grant, left) }
        }
        return best!
    }

    /// Why a session asking for `asked` predictions (nil: what is left) cannot be opened, or nil when it can.
    func refusal(asking asked: Int?, given sessions: [SessionRow]) -> String? {
        let (grant, left) = best(given: sessions)
        guard left > 0 else {
            return
                "\(principal)'s inference grant on \(grant.scope) has no predictions left (\(grant.maxPredictions!) spent or held by open sessions)"
        }
        if let asked, asked > left { return "\(principal)'s inference grant on \(grant.scope) has \(left) predictions left (asked for \(asked))" }
        return nil
    }

    /// Why a session holding `limit` predictions cannot be added, or nil: as ``refusal(asking:given:)`` for a limit the
    /// client asked for; for one taken from what was left, it says that other sessions took it meanwhile.
    func refusal(holding limit: Int, asked: Bool, given sessions: [SessionRow]) -> String? {
        if asked { return refusal(asking: limit, given: sessions) }
        let (grant, left) = best(given: sessions)
        guard left < limit else { return nil }
        return "\(principal)'s inference grant on \(grant.scope) has \(left) predictions left: sessions opened meanwhile took the rest"
    }
}
