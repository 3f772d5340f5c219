import Foundation
import Testing

@testable import CofferCrypto

/// ``Timestamp`` writes what `ISO8601DateFormatter` wrote before it (records, audit entries and attestations signed
/// by earlier versions hold that text), without ICU.
struct TimestampTests {
    @Test func theTextIsTheFormattersToTheMillisecond() {
        let withMilliseconds = ISO8601DateFormatter()
        withMilliseconds.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let seconds = ISO8601DateFormatter()
        seconds.formatOptions = [.withInternetDateTime]
        var generator = SystemRandomNumberGenerator()
        // Dense around millisecond and second boundaries (where rounding decides), then anywhere up to 2096.
        let times =
            (0..<4000).map { 1_700_000_000.998 + Double($0) * 0.000_013 }
            + (0..<4000).map { _ in Double.random(in: 0..<4_000_000_000, using: &generator) } + [0, 951_782_400, 4_107_542_399.9996]
        for time in times {
            let date = Date(timeIntervalSince1970: time)
            #expect(Timestamp.string(date) == withMilliseconds.string(from: date), "\(time)")
            #expect(Timestamp.string(date, milliseconds: false) == seconds.string(from: date), "\(time)")
        }
        #expect(Timestamp.string(Date(timeIntervalSince1970: 1_764_573_144.123_4)) == "2025-12-01T07:12:24.123Z")
    }

    /// The calendar is computed, not asked of `gmtime_r`: the two agree on every day from year 1 to 9999, before 1970
    /// included.
    @Test func theCalendarIsGmtimes() {
        var days: Int64 = -719_162  // 0001-01-01
        while days <= 2_932_896 {  // 9999-12-31
            var time = time_t(days * 86_400)
            var fields = tm()
            gmtime_r(&time, &fields)
            let computed = Timestamp.civil(days: days)
            guard computed == (Int64(fields.tm_year) + 1900, Int64(fields.tm_mon) + 1, Int64(fields.tm_mday)) else {
                Issue.record("day \(days): \(computed)")
                return
            }
            days += 1
        }
        #expect(Timestamp.string(Date(timeIntervalSince1970: -0.0004)) == "1970-01-01T00:00:00.000Z")
        #expect(Timestamp.string(Date(timeIntervalSince1970: -1.5)) == "1969-12-31T23:59:58.500Z")
    }

    /// Any date is written, none traps: one outside years 0000 to 9999 (a query's age of 10^11 days reaches here) as
    /// the nearest end.
    @Test func aDateOutsideTheYearsIsTheNearestEnd() {
        for time in [1e16, 1e300, .infinity, .greatestFiniteMagnitude] {
            #expect(Timestamp.string(Date(timeIntervalSince1970: time)) == "9999-12-31T23:59:59.999Z")
            #expect(Timestamp.string(Date(timeIntervalSince1970: -time)) == "0000-01-01T00:00:00.000Z")
        }
        #expect(Timestamp.string(Date(timeIntervalSince1970: .nan)) == "1970-01-01T00:00:00.000Z")
        #expect(Timestamp.string(Date(timeIntervalSince1970: -62_167_219_200)) == "0000-01-01T00:00:00.000Z")
    }
}
