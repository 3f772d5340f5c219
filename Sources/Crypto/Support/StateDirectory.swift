import Foundation

/// This user's Coffer state, outside any registry directory: `$COFFER_STATE_DIR`, else `$XDG_STATE_HOME/coffer`, else
/// `~/.local/state/coffer`. The client's memory of registries and the records of temporary files live there.
public enum StateDirectory {
    public static func path(environment: [String: String]? = nil) -> String {
        let environment = environment ?? ProcessInfo.processInfo.environment
        if let explicit = environment["COFFER_STATE_DIR"], !explicit.isEmpty { return explicit }
        if let state = environment["XDG_STATE_HOME"], state.hasPrefix("/") { return "\(state)/coffer" }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return "\(home)/.local/state/coffer"
    }
}
