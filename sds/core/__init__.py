"""The agent's domain core, with no I/O: renewal timing, backoff, the workload's credentials,
the Envoy secrets built from them, and the xDS stream protocol."""
