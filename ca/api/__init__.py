"""meshca's wire API: messages generated from ``proto/`` (by ``scripts/gen-protos``) and the
typed method descriptions servers and clients share (:mod:`ca.api.methods`)."""
