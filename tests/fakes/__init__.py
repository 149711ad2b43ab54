"""Honest in-process fakes of the services meshca talks to (over real sockets)."""
