"""Each test is one user's machine: its own client state (the registries it pinned and the ledgers it verified).

Servers started by different tests may reuse a port; a client that remembered another registry at that address
would rightly refuse the new one as a replaced registry, so no state is shared between tests."""
import pytest

from test_interop import ENV


@pytest.fixture(autouse=True)
def client_state(tmp_path):
    previous = ENV.get("COFFER_STATE_DIR")
    ENV["COFFER_STATE_DIR"] = str(tmp_path / "client-state")
    yield
    if previous is None:
        ENV.pop("COFFER_STATE_DIR", None)
    else:
        ENV["COFFER_STATE_DIR"] = previous
