#ifndef COFFER_TEST_STATE_H
#define COFFER_TEST_STATE_H
/// The client state folder this test process was given when it started (see test_state.c); NULL when
/// COFFER_STATE_DIR named one already.
const char *coffer_test_state_folder(void);
#endif
