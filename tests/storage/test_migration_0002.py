"""Migration 0002 (rotation) on SQLite and PostgreSQL: a CA created before it (at revision 0001)
keeps its signing authority and trust bundle when the schema is upgraded, can rotate afterwards,
and the schema can be taken back down to 0001 and up again without changing who signs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine, insert, inspect, select

from ca.core.authority import SigningAuthority
from ca.core.kek import KeyEncryptionKey
from ca.core.keys import key_id, key_type_of, private_key_to_der
from ca.core.lifecycle import AuthorityRole, AuthorityState
from ca.issuance import utc_now
from ca.kek_file import create_kek
from ca.runtime import CaRuntime
from ca.settings import Settings
from ca.storage import migrate
from ca.storage.authority_store import AuthorityStore
from ca.storage.models import Authority, CaState
from tests.factories import TRUST_DOMAIN, make_ca

ACTOR = "admin-cli"
SECOND = timedelta(seconds=1)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def cert_id(cert: x509.Certificate) -> str:
    return key_id(cert.public_key())  # type: ignore[arg-type]


def authority_row_0001(
    cert: x509.Certificate,
    role: AuthorityRole,
    state: AuthorityState,
    *,
    chain: tuple[x509.Certificate, ...],
    key: SigningAuthority | None,
    parent_id: str | None,
    kek: KeyEncryptionKey,
    at: datetime,
) -> dict[str, object]:
    """An ``authorities`` row as the code of revision 0001 wrote it (no ``activated_at``)."""
    ident = cert_id(cert)
    key_type = key_type_of(cert.public_key())
    return {
        "id": ident,
        "role": role.value,
        "parent_id": parent_id,
        "state": state.value,
        "key_type": key_type.value if key_type else "other",
        "fingerprint_sha256": hashlib.sha256(
            cert.public_bytes(serialization.Encoding.DER)
        ).hexdigest(),
        "certificate_pem": pem(cert),
        "chain_pem": "".join(pem(c) for c in chain),
        "encrypted_key": (
            kek.encrypt(private_key_to_der(key.private_key), ident.encode())
            if key is not None
            else None
        ),
        "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc,
        "created_at": at,
        "created_by": ACTOR,
        "updated_at": at,
        "updated_by": ACTOR,
    }


@dataclass(frozen=True)
class Ca0001:
    """What a 0001-era CA holds: the initial family, and one prepared after it."""

    root: SigningAuthority
    intermediate: SigningAuthority
    next_root: SigningAuthority
    next_intermediate: SigningAuthority


def create_0001_ca(engine: Engine, kek: KeyEncryptionKey, *, imported: bool) -> Ca0001:
    """Migrate to 0001 and store a CA the way 0001's ``ca init`` and ``root prepare`` did:
    both initial authorities ACTIVE with the same ``created_at`` (the root's key held unless the
    CA was imported), then a new family PREPARED with bundle sequence 2."""
    migrate.upgrade(engine, "0001")
    init_at = utc_now()
    prepared_at = init_at + SECOND
    root, intermediate = make_ca()
    next_root, next_intermediate = make_ca()
    rows = [
        authority_row_0001(
            root.certificate,
            AuthorityRole.ROOT,
            AuthorityState.ACTIVE,
            chain=(),
            key=None if imported else root,
            parent_id=None,
            kek=kek,
            at=init_at,
        ),
        authority_row_0001(
            intermediate.certificate,
            AuthorityRole.INTERMEDIATE,
            AuthorityState.ACTIVE,
            chain=(root.certificate,),
            key=intermediate,
            parent_id=root.key_id,
            kek=kek,
            at=init_at,
        ),
        authority_row_0001(
            next_root.certificate,
            AuthorityRole.ROOT,
            AuthorityState.PREPARED,
            chain=(),
            key=next_root,
            parent_id=None,
            kek=kek,
            at=prepared_at,
        ),
        authority_row_0001(
            next_intermediate.certificate,
            AuthorityRole.INTERMEDIATE,
            AuthorityState.PREPARED,
            chain=(next_root.certificate,),
            key=next_intermediate,
            parent_id=next_root.key_id,
            kek=kek,
            at=prepared_at,
        ),
    ]
    with engine.begin() as conn:
        conn.execute(
            insert(CaState),
            [
                {
                    "id": 1,
                    "trust_domain": TRUST_DOMAIN.name,
                    "kek_id": kek.id,
                    "bundle_sequence": 2,
                    "created_at": init_at,
                    "updated_at": prepared_at,
                }
            ],
        )
        conn.execute(insert(Authority), rows)
    return Ca0001(root, intermediate, next_root, next_intermediate)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def columns(engine: Engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(table)}


def index_names(engine: Engine, table: str) -> set[str]:
    return {str(i["name"]) for i in inspect(engine).get_indexes(table)}


@pytest.fixture
def runtime(db_url: str, tmp_path: Path) -> CaRuntime:
    return CaRuntime(Settings(db_url=db_url, kek_file=tmp_path / "kek"))


@pytest.mark.parametrize("imported", [False, True], ids=["generated", "imported"])
def test_upgrading_a_0001_ca_keeps_its_signer_and_bundle(
    runtime: CaRuntime, tmp_path: Path, imported: bool
) -> None:
    engine = runtime.engine
    kek = create_kek(tmp_path / "kek")
    try:
        ca = create_0001_ca(engine, kek, imported=imported)
        assert migrate.current_revision(engine) == "0001"
        assert "activated_at" not in columns(engine, "authorities")

        migrate.upgrade(engine, "0002")

        assert migrate.current_revision(engine) == "0002"
        store = AuthorityStore(engine)
        signer = store.signing_authority(runtime.kek())
        assert signer.key_id == ca.intermediate.key_id
        assert der(signer.certificate) == der(ca.intermediate.certificate)
        assert [der(c) for c in signer.chain] == [der(ca.root.certificate)]
        bundle = store.bundle()
        assert bundle.sequence == 2
        assert [der(r) for r in bundle.roots] == [
            der(ca.root.certificate),
            der(ca.next_root.certificate),
        ]
        assert bundle.signing_key_id == ca.intermediate.key_id
        assert bundle.revoked_key_ids == ()
        # Authorities that signed before count as activated when they were created; prepared
        # ones have never signed.
        info = {a.id: a for a in store.authorities()}
        assert info[ca.intermediate.key_id].activated_at == info[ca.intermediate.key_id].created_at
        assert info[ca.next_intermediate.key_id].activated_at is None
        assert info[ca.next_root.key_id].activated_at is None
        assert (info[ca.root.key_id].activated_at is None) is imported
        assert "ca_events" in inspect(engine).get_table_names()
        assert store.event_counts() == {}
    finally:
        engine.dispose()


def test_a_0001_ca_rotates_after_the_upgrade(runtime: CaRuntime, tmp_path: Path) -> None:
    engine = runtime.engine
    kek = create_kek(tmp_path / "kek")
    try:
        ca = create_0001_ca(engine, kek, imported=False)
        migrate.upgrade(engine)
        store = AuthorityStore(engine)
        now = utc_now() + 2 * SECOND

        activated = store.activate(None, actor="bob", now=now)
        assert activated is not None
        assert activated.sequence == 3
        assert store.signing_authority(runtime.kek()).key_id == ca.next_intermediate.key_id
        retired = store.retire(None, actor="bob", now=now + SECOND)
        assert retired is not None
        assert [der(r) for r in store.bundle().roots] == [der(ca.next_root.certificate)]
        assert store.event_counts() == {("activate", "done"): 2, ("retire", "done"): 2}
    finally:
        engine.dispose()


def test_downgrade_to_0001_and_upgrade_again_keeps_signer_and_bundle(
    runtime: CaRuntime,
) -> None:
    engine = runtime.engine
    try:
        migrate.upgrade(engine)
        runtime.initialise(from_dir=None, exist_ok=False, actor=ACTOR)
        runtime.prepare_root(from_dir=None, actor=ACTOR, now=utc_now() + SECOND)
        store = runtime.authorities
        store.activate(None, actor=ACTOR, now=utc_now() + 2 * SECOND)
        signer = store.signing_authority(runtime.kek())
        bundle = store.bundle()
        authorities = {a.id: (a.role, a.state, a.parent_id) for a in store.authorities()}
        assert bundle.sequence == 3

        migrate.downgrade(engine, "0001")

        assert migrate.current_revision(engine) == "0001"
        assert "ca_events" not in inspect(engine).get_table_names()
        assert "activated_at" not in columns(engine, "authorities")
        assert "ix_issued_certs_pod_uid_issued_at" not in index_names(engine, "issued_certs")
        with engine.connect() as conn:
            rows = conn.execute(
                select(Authority.id, Authority.role, Authority.state, Authority.parent_id)
            ).all()
            sequence = conn.execute(select(CaState.bundle_sequence)).scalar_one()
        assert {r.id: (r.role, r.state, r.parent_id) for r in rows} == authorities
        assert sequence == 3

        migrate.upgrade(engine, "0002")

        assert migrate.current_revision(engine) == "0002"
        again = store.signing_authority(runtime.kek())
        assert again.key_id == signer.key_id
        assert der(again.certificate) == der(signer.certificate)
        assert store.bundle() == bundle
        assert {a.id: (a.role, a.state, a.parent_id) for a in store.authorities()} == authorities
        assert "ix_issued_certs_pod_uid_issued_at" in index_names(engine, "issued_certs")
        assert store.event_counts() == {}  # the audit log went with the downgrade
        with engine.connect() as conn:  # migrations leave SQLite's foreign keys enforced
            if conn.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()
