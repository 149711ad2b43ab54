"""The ``meshca`` command line."""
