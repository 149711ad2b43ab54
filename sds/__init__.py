"""The per-workload SDS agent (arrives with the SDS agent issue)."""
