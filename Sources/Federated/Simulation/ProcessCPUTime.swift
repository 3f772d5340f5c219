import Foundation

/// CPU seconds the process has used so far, on all its threads (`clock()`, which glibc reads from
/// `CLOCK_PROCESS_CPUTIME_ID`). A simulated federation's rounds keep every core busy, so their CPU time is what their wall
/// time would be on a machine of their own; on a shared one, other tenants move the wall time of a round by a third from
/// run to run, and its CPU time far less.
enum ProcessCPUTime {
    static func seconds() -> Double { Double(clock()) / Double(CLOCKS_PER_SEC) }
}
