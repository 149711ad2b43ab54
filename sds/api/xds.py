"""Envoy's SDS v3 wire types (from the ``xds-protos`` package) and the method paths the agent
serves. The only module that imports Envoy's generated code, so it has one place to change."""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.transport_sockets.tls.v3 import (
    common_pb2,
    secret_pb2,
    tls_spiffe_validator_config_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2  # noqa: F401  (registers the service descriptor)
from google.rpc import status_pb2

SDS_SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"
STREAM_SECRETS = f"/{SDS_SERVICE}/StreamSecrets"
FETCH_SECRETS = f"/{SDS_SERVICE}/FetchSecrets"
DELTA_SECRETS = f"/{SDS_SERVICE}/DeltaSecrets"

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # noqa: S105
SPIFFE_VALIDATOR = "envoy.tls.cert_validator.spiffe"

# Message classes (generated code ships no type stubs: these are ``Any`` to mypy).
DiscoveryRequest: Any = discovery_pb2.DiscoveryRequest
DiscoveryResponse: Any = discovery_pb2.DiscoveryResponse
DeltaDiscoveryRequest: Any = discovery_pb2.DeltaDiscoveryRequest
DeltaDiscoveryResponse: Any = discovery_pb2.DeltaDiscoveryResponse
DeltaResource: Any = discovery_pb2.Resource
Secret: Any = secret_pb2.Secret
TlsCertificate: Any = common_pb2.TlsCertificate
CertificateValidationContext: Any = common_pb2.CertificateValidationContext
TypedExtensionConfig: Any = extension_pb2.TypedExtensionConfig
DataSource: Any = base_pb2.DataSource
SpiffeValidatorConfig: Any = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig
Status: Any = status_pb2.Status
