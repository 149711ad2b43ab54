"""The committed protobuf modules are what ``scripts/gen-protos`` makes of ``proto/`` today, and
the Istio certificate service keeps the exact wire shape istio-agent calls (package, service,
method, field numbers and types): a drifted field number would break every workload silently."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from ca.api import istio_ca_pb2, trust_bundle_pb2

REPO = Path(__file__).resolve().parent.parent
GENERATED = [
    "ca/api/istio_ca_pb2.py",
    "ca/api/istio_ca_pb2.pyi",
    "ca/api/trust_bundle_pb2.py",
    "ca/api/trust_bundle_pb2.pyi",
    "sds/api/workload_pb2.py",
    "sds/api/workload_pb2.pyi",
]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("protos")
    result = subprocess.run(
        [str(REPO / "scripts" / "gen-protos"), str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.mark.parametrize("path", GENERATED)
def test_committed_module_matches_a_fresh_generation(regenerated: Path, path: str) -> None:
    fresh = (regenerated / path).read_bytes()
    committed = (REPO / path).read_bytes()
    assert fresh == committed, f"{path} is stale: run scripts/gen-protos and commit the result"


def test_generation_makes_nothing_else(regenerated: Path) -> None:
    made = sorted(str(p.relative_to(regenerated)) for p in regenerated.rglob("*") if p.is_file())
    assert made == sorted(GENERATED)


def field_shape(message: object, name: str) -> tuple[int, int, bool, str | None]:
    field = message.fields_by_name[name]  # type: ignore[attr-defined]
    message_type = field.message_type.full_name if field.message_type else None
    return field.number, field.type, field.is_repeated, message_type


@pytest.mark.parametrize(
    ("message", "name", "shape"),
    [
        pytest.param(
            "IstioCertificateRequest",
            "csr",
            (1, FieldDescriptor.TYPE_STRING, False, None),
            id="request-csr",
        ),
        pytest.param(
            "IstioCertificateRequest",
            "validity_duration",
            (3, FieldDescriptor.TYPE_INT64, False, None),
            id="request-validity_duration",
        ),
        pytest.param(
            "IstioCertificateRequest",
            "metadata",
            (4, FieldDescriptor.TYPE_MESSAGE, False, "google.protobuf.Struct"),
            id="request-metadata",
        ),
        pytest.param(
            "IstioCertificateResponse",
            "cert_chain",
            (1, FieldDescriptor.TYPE_STRING, True, None),
            id="response-cert_chain",
        ),
    ],
)
def test_istio_certificate_messages_keep_their_wire_shape(
    message: str, name: str, shape: tuple[int, int, bool, str | None]
) -> None:
    descriptor = istio_ca_pb2.DESCRIPTOR.message_types_by_name[message]
    assert field_shape(descriptor, name) == shape


def test_istio_messages_have_no_other_fields() -> None:
    messages = istio_ca_pb2.DESCRIPTOR.message_types_by_name
    assert {f.name for f in messages["IstioCertificateRequest"].fields} == {
        "csr",
        "validity_duration",
        "metadata",
    }
    assert {f.name for f in messages["IstioCertificateResponse"].fields} == {"cert_chain"}


def test_istio_certificate_service_is_where_istio_agent_calls_it() -> None:
    file = istio_ca_pb2.DESCRIPTOR
    assert file.package == "istio.v1.auth"
    service = file.services_by_name["IstioCertificateService"]
    assert service.full_name == "istio.v1.auth.IstioCertificateService"
    (method,) = service.methods
    assert method.name == "CreateCertificate"
    assert method.input_type.full_name == "istio.v1.auth.IstioCertificateRequest"
    assert method.output_type.full_name == "istio.v1.auth.IstioCertificateResponse"
    assert not method.client_streaming
    assert not method.server_streaming


def test_trust_bundle_service_streams_bundles() -> None:
    file = trust_bundle_pb2.DESCRIPTOR
    assert file.package == "meshca.v1"
    (method,) = file.services_by_name["TrustBundleService"].methods
    assert method.name == "WatchBundle"
    assert method.input_type.full_name == "meshca.v1.WatchBundleRequest"
    assert method.output_type.full_name == "meshca.v1.TrustBundle"
    assert not method.client_streaming
    assert method.server_streaming
    bundle = file.message_types_by_name["TrustBundle"]
    assert [
        field_shape(bundle, n)
        for n in (
            "trust_domain",
            "sequence",
            "root_certificates",
            "signing_key_id",
        )
    ] == [
        (1, FieldDescriptor.TYPE_STRING, False, None),
        (2, FieldDescriptor.TYPE_UINT64, False, None),
        (3, FieldDescriptor.TYPE_STRING, True, None),
        (4, FieldDescriptor.TYPE_STRING, False, None),
    ]


def test_request_round_trips_on_the_wire() -> None:
    request = istio_ca_pb2.IstioCertificateRequest(csr="-----BEGIN...", validity_duration=3600)
    request.metadata.update({"ImpersonatedIdentity": "spiffe://cluster.local/ns/a/sa/b"})
    # Field 1 (csr, length-delimited) is tag 0x0a; field 3 (varint) is tag 0x18.
    wire = request.SerializeToString()
    assert wire.startswith(b"\x0a\x0d-----BEGIN...")
    assert b"\x18\x90\x1c" in wire
    assert istio_ca_pb2.IstioCertificateRequest.FromString(wire) == request
