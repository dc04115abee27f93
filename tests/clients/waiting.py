"""Polling for the client scripts (run as scripts in other venvs: imported from beside them)."""
import sys
import time

POLL_S = 0.2


def wait_for(what, check, timeout_s):
    """check()'s first truthy value; the script exits naming `what` after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(POLL_S)
    sys.exit(f"timed out waiting for {what}")
