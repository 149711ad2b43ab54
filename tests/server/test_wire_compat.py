"""Wire compatibility with Istio's ``istio.v1.auth.IstioCertificateService``: requests encoded by
hand from the field numbers (csr = 1 string, validity_duration = 3 int64, metadata = 4
google.protobuf.Struct), sent as raw bytes, and responses decoded by hand (cert_chain = 1
repeated string) — proving the bytes on the wire, not our generated classes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

from ca.api import methods
from tests.factories import make_csr
from tests.server.conftest import (
    Served,
    certificates,
    refusal,
    serial_of,
    spiffe_id,
    uri_sans,
)

# --- protobuf wire format by hand -------------------------------------------------------------

VARINT, LENGTH_DELIMITED = 0, 2


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 is two's complement on the wire: negatives take 10 bytes
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def length_delimited(field: int, payload: bytes) -> bytes:
    return tag(field, LENGTH_DELIMITED) + varint(len(payload)) + payload


def struct_of_strings(values: dict[str, str]) -> bytes:
    """``google.protobuf.Struct``: ``map<string, Value> fields = 1``; each entry is a message
    with key = 1 and value = 2; ``Value.string_value`` is field 3."""
    out = b""
    for key, value in values.items():
        entry = length_delimited(1, key.encode()) + length_delimited(
            2, length_delimited(3, value.encode())
        )
        out += length_delimited(1, entry)
    return out


def certificate_request(csr: bytes, validity: int | None, metadata: dict[str, str]) -> bytes:
    out = length_delimited(1, csr)  # 0x0a: field 1, length-delimited
    if validity is not None:
        out += tag(3, VARINT) + varint(validity)  # 0x18: field 3, varint
    if metadata:
        out += length_delimited(4, struct_of_strings(metadata))  # 0x22: field 4, length-delim.
    return out


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def read_fields(data: bytes) -> list[tuple[int, Any]]:
    """(field number, value) pairs of a message: ints for varints, bytes for the rest."""
    fields: list[tuple[int, Any]] = []
    at = 0
    while at < len(data):
        key, at = read_varint(data, at)
        field, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, at = read_varint(data, at)
            fields.append((field, value))
        elif wire_type == LENGTH_DELIMITED:
            size, at = read_varint(data, at)
            fields.append((field, data[at : at + size]))
            at += size
        else:
            raise AssertionError(f"unexpected wire type {wire_type} for field {field}")
    return fields


def cert_chain(response: bytes) -> list[str]:
    """``IstioCertificateResponse.cert_chain``: field 1, repeated string (tag 0x0a each)."""
    assert response[:1] == b"\x0a", response[:16]
    fields = read_fields(response)
    assert {number for number, _ in fields} == {1}, fields
    return [value.decode() for _, value in fields]


# --- calls with raw bytes ---------------------------------------------------------------------


def raw_create_certificate(
    served: Served, request: bytes, token: str, extra_metadata: tuple[tuple[str, str], ...] = ()
) -> bytes:
    with served.ca.channel() as channel:
        call = channel.unary_unary(
            methods.CREATE_CERTIFICATE, request_serializer=None, response_deserializer=None
        )
        response: bytes = call(
            request,
            metadata=[("authorization", f"Bearer {token}"), *extra_metadata],
            timeout=30,
        )
    return response


def test_hand_encoded_istio_request_is_served(
    sqlite_url: str, serve: Callable[..., Served]
) -> None:
    served = serve(sqlite_url)
    token = served.minter.mint("bookinfo", "reviews", pod_name="reviews-v1-abc")
    csr = make_csr()
    request = certificate_request(
        csr,
        7200,
        # what istiod sends when it asks on a workload's behalf; a caller cannot use it to be
        # someone else
        {"ImpersonatedIdentity": spiffe_id("istio-system", "istiod")},
    )
    assert request.startswith(b"\x0a")
    assert b"\x18" + varint(7200) + b"\x22" in request

    response = raw_create_certificate(served, request, token, (("clusterid", "Kubernetes"),))

    chain = cert_chain(response)
    assert len(chain) == 3
    leaf = certificates(chain)[0]
    assert uri_sans(leaf) == [spiffe_id("bookinfo", "reviews")]
    (row,) = served.workload_rows()
    assert row.serial == serial_of(leaf)
    assert row.requested_ttl_seconds == 7200  # field 3 was read as the lifetime
    assert leaf.not_valid_after_utc == row.issued_at.replace(microsecond=0) + timedelta(hours=2)
    assert row.pod_name == "reviews-v1-abc"


def test_hand_encoding_matches_the_istio_schema() -> None:
    """The same bytes parse, with a descriptor built here from Istio's field numbers (not our
    generated module), to the intended values, and serialize back to the same bytes."""
    pool = descriptor_pool.DescriptorPool()
    struct_file = descriptor_pb2.FileDescriptorProto()
    struct_pb2.DESCRIPTOR.CopyToProto(struct_file)
    pool.Add(struct_file)
    istio = descriptor_pb2.FileDescriptorProto(
        name="istio_ca_handmade.proto",
        package="istio.v1.auth",
        syntax="proto3",
        dependency=["google/protobuf/struct.proto"],
    )
    request = istio.message_type.add(name="IstioCertificateRequest")
    label = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    types = descriptor_pb2.FieldDescriptorProto
    request.field.add(name="csr", number=1, type=types.TYPE_STRING, label=label)
    request.field.add(name="validity_duration", number=3, type=types.TYPE_INT64, label=label)
    request.field.add(
        name="metadata",
        number=4,
        type=types.TYPE_MESSAGE,
        type_name=".google.protobuf.Struct",
        label=label,
    )
    pool.Add(istio)
    message_class = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("istio.v1.auth.IstioCertificateRequest")
    )
    csr = make_csr()

    encoded = certificate_request(csr, -5, {"ImpersonatedIdentity": "spiffe://x/y"})
    parsed = message_class.FromString(encoded)

    assert parsed.csr == csr.decode()
    assert parsed.validity_duration == -5
    assert dict(parsed.metadata) == {"ImpersonatedIdentity": "spiffe://x/y"}
    assert parsed.SerializeToString(deterministic=True) == encoded
    # and our generated class reads the same bytes the same way
    ours = methods.CertificateRequest.FromString(encoded)
    assert (ours.csr, ours.validity_duration) == (parsed.csr, -5)


def test_unknown_fields_are_ignored(sqlite_url: str, serve: Callable[..., Served]) -> None:
    """A newer client's extra fields (proto3: skipped, not an error)."""
    served = serve(sqlite_url)
    request = (
        certificate_request(make_csr(), 3600, {})
        + length_delimited(2, b"an old subject field")
        + tag(99, VARINT)
        + varint(1)
    )
    chain = cert_chain(raw_create_certificate(served, request, served.minter.mint()))
    assert len(chain) == 3


@pytest.mark.parametrize(
    ("validity", "reason"),
    [(-1, "ttl_invalid"), (1 << 40, "ttl_invalid"), (91 * 24 * 3600, "ttl_too_long")],
    ids=["negative-int64", "absurd", "over-max"],
)
def test_out_of_range_validity_on_the_wire(
    sqlite_url: str, serve: Callable[..., Served], validity: int, reason: str
) -> None:
    served = serve(sqlite_url)
    request = certificate_request(make_csr(), validity, {})
    with pytest.raises(grpc.RpcError) as info:
        raw_create_certificate(served, request, served.minter.mint())
    failure = refusal(info.value)
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert served.workload_rows() == []


def test_empty_request_is_invalid(sqlite_url: str, serve: Callable[..., Served]) -> None:
    served = serve(sqlite_url)
    with pytest.raises(grpc.RpcError) as info:
        raw_create_certificate(served, b"", served.minter.mint())
    failure = refusal(info.value)
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "csr_malformed")


def test_watch_bundle_wire_format(sqlite_url: str, serve: Callable[..., Served]) -> None:
    """``meshca.v1.TrustBundle``: trust_domain = 1 string, sequence = 2 uint64,
    root_certificates = 3 repeated string, signing_key_id = 4 string, reissue_window = 5
    google.protobuf.Duration (seconds = 1 varint), revoked_key_ids = 6 repeated string (none
    here, so absent)."""
    served = serve(sqlite_url)
    with served.ca.channel() as channel:
        stream = channel.unary_stream(
            methods.WATCH_BUNDLE, request_serializer=None, response_deserializer=None
        )(b"", metadata=[("authorization", f"Bearer {served.minter.mint()}")], timeout=30)
        first: bytes = next(stream)
        stream.cancel()

    fields = read_fields(first)
    bundle = served.ca.server.watch.current.bundle  # type: ignore[union-attr]
    assert fields == [
        (1, b"cluster.local"),
        (2, 1),
        (3, served.ca.root_pem()),
        (4, (bundle.signing_key_id or "").encode()),
        (5, bytes([0x08, 0xAC, 0x02])),  # Duration{seconds: 300}: the default 5 min window
    ]
