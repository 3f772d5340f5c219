#ifndef COFFER_TEST_STATE_H
#define COFFER_TEST_STATE_H
/// The client state folder this test process made when it started, which COFFER_STATE_DIR names (test_state.c).
const char *coffer_test_state_folder(void);
#endif
