"""Caller authentication: Kubernetes service-account tokens (verified locally or by TokenReview)
and client certificates issued by this CA."""
