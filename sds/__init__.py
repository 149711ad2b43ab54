"""The per-workload agent (``meshca agent``): keeps the workload's X.509-SVID fresh and serves it
to Envoy over SDS v3 and to applications over the SPIFFE Workload API, both on unix sockets."""
