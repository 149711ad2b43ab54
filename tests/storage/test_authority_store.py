"""The CA's authorities in the database (through :class:`CaRuntime`) on SQLite and PostgreSQL:
initialisation, keys encrypted under the KEK, the signing authority, and the trust bundle."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, Row, select, update

from ca.core.authority import SigningAuthority, build_intermediate
from ca.core.errors import ConfigurationError
from ca.core.kek import KeyEncryptionKey, new_kek_material
from ca.core.keys import (
    KeyType,
    generate_private_key,
    key_id,
    private_key_from_der,
    private_key_to_der,
    spki_der,
)
from ca.core.lifecycle import AuthorityRole, AuthorityState
from ca.issuance import utc_now
from ca.kek_file import create_kek, read_kek
from ca.runtime import CaRuntime
from ca.settings import Settings
from ca.storage import migrate
from ca.storage.authority_store import NewAuthority
from ca.storage.models import Authority
from tests.factories import TRUST_DOMAIN, make_ca

ACTOR = "admin@example.test"


def new_runtime(db_url: str, kek_file: Path, **settings: object) -> CaRuntime:
    return CaRuntime(Settings(db_url=db_url, kek_file=kek_file, **settings))  # type: ignore[arg-type]


@pytest.fixture
def runtime(db_url: str, tmp_path: Path) -> Iterator[CaRuntime]:
    rt = new_runtime(db_url, tmp_path / "kek")
    migrate.upgrade(rt.engine)
    yield rt
    rt.engine.dispose()


def stored_rows(engine: Engine) -> dict[str, Row[Any]]:
    with engine.connect() as conn:
        return {row.id: row for row in conn.execute(select(Authority)).all()}


def cert_id(cert: x509.Certificate) -> str:
    return key_id(cert.public_key())  # type: ignore[arg-type]


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def write_cacerts(directory: Path, signer: SigningAuthority) -> Path:
    """Istio's ``cacerts`` layout for ``signer``."""
    directory.mkdir()
    pem = serialization.Encoding.PEM
    (directory / "ca-cert.pem").write_bytes(signer.certificate.public_bytes(pem))
    (directory / "ca-key.pem").write_bytes(
        signer.private_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (directory / "cert-chain.pem").write_bytes(
        b"".join(c.public_bytes(pem) for c in signer.chain_for_leaf)
    )
    (directory / "root-cert.pem").write_bytes(signer.root.public_bytes(pem))
    return directory


def test_initialise_stores_the_root_and_the_intermediate(runtime: CaRuntime) -> None:
    before = utc_now()
    outcome = runtime.initialise(from_dir=None, exist_ok=False, actor=ACTOR)

    assert outcome.created is True
    assert outcome.kek_created == runtime.settings.kek_file
    assert stat.S_IMODE(runtime.settings.kek_file.stat().st_mode) == 0o600
    identity = runtime.authorities.require_identity()
    assert identity == outcome.identity
    assert identity.trust_domain == TRUST_DOMAIN
    assert identity.kek_id == read_kek(runtime.settings.kek_file).id
    assert identity.bundle_sequence == 1
    assert identity.created_at.utcoffset() == timedelta(0)
    assert before <= identity.created_at <= utc_now()

    root, intermediate = runtime.authorities.authorities()
    rows = stored_rows(runtime.engine)
    assert set(rows) == {root.id, intermediate.id}
    root_cert = x509.load_pem_x509_certificate(rows[root.id].certificate_pem.encode())
    inter_cert = x509.load_pem_x509_certificate(rows[intermediate.id].certificate_pem.encode())

    assert root.role is AuthorityRole.ROOT
    assert root.parent_id is None
    assert root.id == cert_id(root_cert)
    assert rows[root.id].chain_pem == ""
    assert intermediate.role is AuthorityRole.INTERMEDIATE
    assert intermediate.parent_id == root.id
    assert intermediate.id == cert_id(inter_cert) == outcome.signing_key_id
    assert x509.load_pem_x509_certificates(rows[intermediate.id].chain_pem.encode()) == [root_cert]
    inter_cert.verify_directly_issued_by(root_cert)

    for info, cert in ((root, root_cert), (intermediate, inter_cert)):
        assert info.state is AuthorityState.ACTIVE
        assert info.has_key is True
        assert info.key_type == KeyType.EC_P256.value
        assert info.fingerprint_sha256 == hashlib.sha256(der(cert)).hexdigest()
        assert info.not_before == cert.not_valid_before_utc
        assert info.not_after == cert.not_valid_after_utc
        assert info.created_by == ACTOR
        assert info.created_at == identity.created_at
        assert info.subject == cert.subject.rfc4514_string()


def test_ca_keys_are_stored_encrypted_under_the_kek(runtime: CaRuntime) -> None:
    runtime.initialise(from_dir=None, exist_ok=False, actor=ACTOR)
    kek = runtime.kek()

    rows = stored_rows(runtime.engine)
    assert len(rows) == 2
    for authority_id, row in rows.items():
        ciphertext = bytes(row.encrypted_key)
        plaintext = kek.decrypt(ciphertext, authority_id.encode())
        key = private_key_from_der(plaintext)
        cert = x509.load_pem_x509_certificate(row.certificate_pem.encode())
        assert spki_der(key.public_key()) == spki_der(cert.public_key())
        # Neither the PKCS#8 DER nor the raw private scalar is in the stored bytes.
        assert private_key_to_der(key) not in ciphertext
        scalar = key.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
        assert scalar not in ciphertext
        assert plaintext not in ciphertext


def test_an_encrypted_key_moved_to_another_authority_does_not_decrypt(
    runtime: CaRuntime,
) -> None:
    runtime.initialise(from_dir=None, exist_ok=False, actor=ACTOR)
    root, intermediate = runtime.authorities.authorities()
    rows = stored_rows(runtime.engine)
    with runtime.engine.begin() as conn:
        conn.execute(
            update(Authority)
            .where(Authority.id == intermediate.id)
            .values(encrypted_key=rows[root.id].encrypted_key)
        )
    with pytest.raises(ConfigurationError) as info:
        runtime.authorities.signing_authority(runtime.kek())
    assert info.value.reason == "kek_decrypt_failed"


def test_signing_authority_is_the_intermediate_with_its_key(runtime: CaRuntime) -> None:
    outcome = runtime.initialise(from_dir=None, exist_ok=False, actor=ACTOR)
    root, intermediate = runtime.authorities.authorities()

    signer = runtime.authorities.signing_authority(runtime.kek())

    assert signer.key_id == intermediate.id == outcome.signing_key_id
    assert spki_der(signer.private_key.public_key()) == spki_der(signer.certificate.public_key())
    assert [cert_id(c) for c in signer.chain] == [root.id]
    signer.verify_chain()


def test_second_initialise_is_refused_and_overwrites_nothing(
    runtime: CaRuntime, db_url: str, tmp_path: Path
) -> None:
    runtime.initialise(from_dir=None, exist_ok=False, actor=ACTOR)
    identity = runtime.authorities.require_identity()
    rows = stored_rows(runtime.engine)
    kek_text = runtime.settings.kek_file.read_text()

    with pytest.raises(ConfigurationError) as info:
        runtime.initialise(from_dir=None, exist_ok=False, actor="intruder")
    assert info.value.reason == "already_initialised"

    # Another process with another KEK file and trust domain is refused before it writes a KEK.
    other_kek = tmp_path / "other.kek"
    other = new_runtime(db_url, other_kek, trust_domain="evil.example")
    try:
        with pytest.raises(ConfigurationError) as info:
            other.initialise(from_dir=None, exist_ok=False, actor="intruder")
        assert info.value.reason == "already_initialised"
        assert not other_kek.exists()
    finally:
        other.engine.dispose()

    # The store itself refuses too (two `ca init` racing past the runtime's check).
    root, _intermediate = make_ca()
    fresh = [NewAuthority(AuthorityRole.ROOT, root.certificate, (), root.private_key)]
    with pytest.raises(ConfigurationError) as info:
        runtime.authorities.initialise(
            TRUST_DOMAIN,
            KeyEncryptionKey(new_kek_material()),
            fresh,
            actor="intruder",
            now=utc_now(),
        )
    assert info.value.reason == "already_initialised"

    assert runtime.authorities.require_identity() == identity
    after = stored_rows(runtime.engine)
    assert set(after) == set(rows)
    for authority_id, row in rows.items():
        assert after[authority_id].encrypted_key == row.encrypted_key
        assert after[authority_id].certificate_pem == row.certificate_pem
        assert after[authority_id].created_by == ACTOR
    assert runtime.settings.kek_file.read_text() == kek_text


def test_initialise_with_exist_ok_keeps_the_existing_ca(runtime: CaRuntime) -> None:
    first = runtime.initialise(from_dir=None, exist_ok=False, actor=ACTOR)
    rows = stored_rows(runtime.engine)

    again = runtime.initialise(from_dir=None, exist_ok=True, actor="someone-else")

    assert again.created is False
    assert again.kek_created is None
    assert again.identity == first.identity
    assert again.signing_key_id == first.signing_key_id
    assert set(stored_rows(runtime.engine)) == set(rows)


def test_signing_authority_with_the_wrong_kek_is_refused(runtime: CaRuntime) -> None:
    runtime.initialise(from_dir=None, exist_ok=False, actor=ACTOR)
    stored_kek_id = runtime.authorities.require_identity().kek_id
    wrong = KeyEncryptionKey(new_kek_material())

    with pytest.raises(ConfigurationError) as info:
        runtime.authorities.signing_authority(wrong)

    assert info.value.reason == "kek_mismatch"
    assert stored_kek_id in info.value.message
    assert wrong.id in info.value.message


def test_issuance_service_with_another_kek_file_is_refused(
    runtime: CaRuntime, db_url: str, tmp_path: Path
) -> None:
    runtime.initialise(from_dir=None, exist_ok=False, actor=ACTOR)
    other_kek = tmp_path / "other.kek"
    create_kek(other_kek)
    other = new_runtime(db_url, other_kek)
    try:
        with pytest.raises(ConfigurationError) as info:
            other.issuance_service()
        assert info.value.reason == "kek_mismatch"
    finally:
        other.engine.dispose()


def test_uninitialised_database_is_reported(runtime: CaRuntime) -> None:
    assert runtime.authorities.identity() is None
    assert runtime.authorities.authorities() == []
    for call in (
        runtime.authorities.require_identity,
        runtime.authorities.bundle,
        lambda: runtime.authorities.signing_authority(KeyEncryptionKey(new_kek_material())),
    ):
        with pytest.raises(ConfigurationError) as info:
            call()
        assert info.value.reason == "not_initialised"


def test_bundle_holds_the_root_at_sequence_one(runtime: CaRuntime) -> None:
    outcome = runtime.initialise(from_dir=None, exist_ok=False, actor=ACTOR)
    root, _intermediate = runtime.authorities.authorities()

    bundle = runtime.authorities.bundle()

    assert bundle.trust_domain == TRUST_DOMAIN
    assert bundle.sequence == 1
    assert [cert_id(c) for c in bundle.roots] == [root.id]
    assert bundle.signing_key_id == outcome.signing_key_id
    assert x509.load_pem_x509_certificates(bundle.pem().encode()) == list(bundle.roots)
    jwks = bundle.jwks()
    assert jwks["spiffe_sequence"] == 1
    assert len(jwks["keys"]) == 1


def test_plugged_in_ca_stores_only_the_signing_key(runtime: CaRuntime, tmp_path: Path) -> None:
    root, intermediate = make_ca()
    cacerts = write_cacerts(tmp_path / "cacerts", intermediate)

    outcome = runtime.initialise(from_dir=cacerts, exist_ok=False, actor=ACTOR)

    assert outcome.signing_key_id == intermediate.key_id
    infos = {a.id: a for a in runtime.authorities.authorities()}
    assert set(infos) == {root.key_id, intermediate.key_id}
    assert infos[root.key_id].role is AuthorityRole.ROOT
    assert infos[root.key_id].has_key is False
    assert infos[intermediate.key_id].role is AuthorityRole.INTERMEDIATE
    assert infos[intermediate.key_id].has_key is True
    assert infos[intermediate.key_id].parent_id == root.key_id

    rows = stored_rows(runtime.engine)
    assert rows[root.key_id].encrypted_key is None
    assert der(x509.load_pem_x509_certificate(rows[root.key_id].certificate_pem.encode())) == der(
        root.certificate
    )
    stored_key = private_key_from_der(
        runtime.kek().decrypt(rows[intermediate.key_id].encrypted_key, intermediate.key_id.encode())
    )
    assert private_key_to_der(stored_key) == private_key_to_der(intermediate.private_key)

    signer = runtime.authorities.signing_authority(runtime.kek())
    assert der(signer.certificate) == der(intermediate.certificate)
    assert [der(c) for c in signer.chain] == [der(root.certificate)]

    bundle = runtime.authorities.bundle()
    assert [der(c) for c in bundle.roots] == [der(root.certificate)]
    assert bundle.signing_key_id == intermediate.key_id


def middle_ca(root: SigningAuthority) -> SigningAuthority:
    """A CA between ``root`` and the signing CA (an organisation's policy CA), which may itself
    certify CAs."""
    key = generate_private_key(KeyType.EC_P256)
    now = utc_now()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "policy CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(root.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(root.private_key, hashes.SHA256())
    )
    return SigningAuthority(cert, key, (root.certificate,))


def test_plugged_in_three_level_chain_stores_only_the_signing_key(
    runtime: CaRuntime, tmp_path: Path
) -> None:
    root, _intermediate = make_ca()
    middle = middle_ca(root)
    signer = build_intermediate(
        TRUST_DOMAIN,
        generate_private_key(KeyType.EC_P256),
        middle,
        now=utc_now(),
        ttl=timedelta(days=7),
    )
    cacerts = write_cacerts(tmp_path / "cacerts", signer)

    runtime.initialise(from_dir=cacerts, exist_ok=False, actor=ACTOR)

    infos = {a.id: a for a in runtime.authorities.authorities()}
    assert set(infos) == {root.key_id, middle.key_id, signer.key_id}
    assert {i for i, a in infos.items() if a.has_key} == {signer.key_id}
    assert infos[signer.key_id].parent_id == middle.key_id
    assert infos[middle.key_id].parent_id == root.key_id
    assert infos[middle.key_id].role is AuthorityRole.INTERMEDIATE
    assert infos[root.key_id].role is AuthorityRole.ROOT
    stored = runtime.authorities.signing_authority(runtime.kek())
    assert der(stored.certificate) == der(signer.certificate)
    assert [der(c) for c in stored.chain] == [der(middle.certificate), der(root.certificate)]
    assert [der(c) for c in runtime.authorities.bundle().roots] == [der(root.certificate)]


def test_plugged_in_bare_root_signs_with_the_root(runtime: CaRuntime, tmp_path: Path) -> None:
    root, _intermediate = make_ca()
    cacerts = write_cacerts(tmp_path / "cacerts", root)

    outcome = runtime.initialise(from_dir=cacerts, exist_ok=False, actor=ACTOR)

    assert outcome.signing_key_id == root.key_id
    (info,) = runtime.authorities.authorities()
    assert info.role is AuthorityRole.ROOT
    assert info.has_key is True
    signer = runtime.authorities.signing_authority(runtime.kek())
    assert der(signer.certificate) == der(root.certificate)
    assert signer.chain == ()
    bundle = runtime.authorities.bundle()
    assert [der(c) for c in bundle.roots] == [der(root.certificate)]
    assert bundle.signing_key_id == root.key_id
