"""The CA's domain core: identities, CSR policy, certificate building and validation.

Nothing in this package performs I/O; adapters above it feed it keys, clocks and storage.
"""
