import CTestState

/// The client state folder this test process made as it started (Tests/TestState), which COFFER_STATE_DIR names in it.
public enum TestState {
    public static var folder: String { String(cString: coffer_test_state_folder()) }
}
