/// `GET /v1/ledger`'s answer: records after the asked-for one, envelopes base64.
public struct LedgerPage: Sendable, Codable, Equatable {
    public struct Entry: Sendable, Codable, Equatable {
        public var seq: Int64
        public var envelope: String

        public init(seq: Int64, envelope: String) {
            self.seq = seq
            self.envelope = envelope
        }
    }

    public var records: [Entry]

    public init(records: [Entry]) { self.records = records }
}
