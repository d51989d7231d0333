"""Checks that prove a box is right: GPU and driver, drift, model file, endpoint.

Every check is a ``Check``: an id, a status, what was observed and expected,
and a hint. Check functions are pure (they take gathered output or responses);
the few that talk to something (the endpoint) take their I/O as arguments.
"""
