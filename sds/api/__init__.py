"""Wire types the agent serves: Envoy's SDS v3 (from ``xds-protos``) and the SPIFFE Workload API
(generated from ``proto/sds/api/workload.proto``)."""
