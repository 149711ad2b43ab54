"""Preparing a new CA authority (the first step of a rotation) on SQLite and PostgreSQL: the new
root joins the trust bundle under a new sequence number while the old intermediate keeps
signing; only trusted states count as issuers; and a wrong KEK writes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select, update

from ca.core.authority import SigningAuthority
from ca.core.errors import ConfigurationError, MeshcaError
from ca.core.kek import KeyEncryptionKey, new_kek_material
from ca.core.keys import private_key_from_der, private_key_to_der
from ca.core.lifecycle import AuthorityRole, AuthorityState
from ca.issuance import utc_now
from ca.runtime import CaRuntime
from ca.settings import Settings
from ca.storage import migrate
from ca.storage.authority_store import AuthorityStore, NewAuthority
from ca.storage.models import Authority
from tests.factories import make_ca

ACTOR = "admin@example.test"
ROTATOR = "rotator@example.test"


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def runtime(db_url: str, tmp_path: Path) -> Iterator[CaRuntime]:
    """An initialised CA: one active root and one active intermediate."""
    rt = CaRuntime(Settings(db_url=db_url, kek_file=tmp_path / "kek"))
    migrate.upgrade(rt.engine)
    rt.initialise(from_dir=None, exist_ok=False, actor=ACTOR)
    yield rt
    rt.engine.dispose()


@pytest.fixture
def store(runtime: CaRuntime) -> AuthorityStore:
    return runtime.authorities


def new_pair() -> tuple[SigningAuthority, SigningAuthority, list[NewAuthority]]:
    """A fresh root and intermediate, as rows to prepare."""
    root, intermediate = make_ca()
    rows = [
        NewAuthority(AuthorityRole.ROOT, root.certificate, (), root.private_key),
        NewAuthority(
            AuthorityRole.INTERMEDIATE,
            intermediate.certificate,
            (root.certificate,),
            intermediate.private_key,
            parent_id=root.key_id,
        ),
    ]
    return root, intermediate, rows


def snapshot(store: AuthorityStore) -> tuple[object, ...]:
    """Everything ``prepare`` could change."""
    return (
        store.require_identity(),
        store.authorities(),
        store.bundle(),
        sorted(der(c) for c in store.trusted_issuers()),
    )


def test_prepare_adds_prepared_authorities_and_bumps_the_bundle_sequence(
    store: AuthorityStore, runtime: CaRuntime
) -> None:
    old_root, old_intermediate = store.authorities()
    root, intermediate, rows = new_pair()
    now = utc_now()

    sequence = store.prepare(runtime.kek(), rows, actor=ROTATOR, now=now).sequence

    assert sequence == 2
    assert store.bundle_sequence() == 2
    assert store.require_identity().bundle_sequence == 2
    infos = {a.id: a for a in store.authorities()}
    assert set(infos) == {old_root.id, old_intermediate.id, root.key_id, intermediate.key_id}
    assert infos[old_root.id].state is AuthorityState.ACTIVE
    assert infos[old_intermediate.id].state is AuthorityState.ACTIVE
    for new, role in ((root, AuthorityRole.ROOT), (intermediate, AuthorityRole.INTERMEDIATE)):
        info = infos[new.key_id]
        assert info.state is AuthorityState.PREPARED
        assert info.role is role
        assert info.has_key is True
        assert info.created_by == ROTATOR
        assert info.created_at == now
        assert info.not_after == new.certificate.not_valid_after_utc
    assert infos[intermediate.key_id].parent_id == root.key_id


def test_prepared_keys_are_stored_encrypted_and_decrypt_under_the_kek(
    store: AuthorityStore, runtime: CaRuntime
) -> None:
    root, intermediate, rows = new_pair()
    store.prepare(runtime.kek(), rows, actor=ROTATOR, now=utc_now())

    with runtime.engine.connect() as conn:
        stored = dict(
            conn.execute(
                select(Authority.id, Authority.encrypted_key).where(
                    Authority.id.in_([root.key_id, intermediate.key_id])
                )
            ).all()
        )
    for authority in (root, intermediate):
        ciphertext = stored[authority.key_id]
        assert ciphertext is not None
        assert private_key_to_der(authority.private_key) not in ciphertext
        plaintext = runtime.kek().decrypt(ciphertext, authority.key_id.encode())
        assert private_key_to_der(private_key_from_der(plaintext)) == private_key_to_der(
            authority.private_key
        )


def test_bundle_holds_both_roots_while_the_old_intermediate_still_signs(
    store: AuthorityStore, runtime: CaRuntime
) -> None:
    old_signer = store.signing_authority(runtime.kek())
    old_root = old_signer.root
    root, _intermediate, rows = new_pair()

    store.prepare(runtime.kek(), rows, actor=ROTATOR, now=utc_now() + timedelta(seconds=1))

    bundle = store.bundle()
    assert bundle.sequence == 2
    assert [der(r) for r in bundle.roots] == [der(old_root), der(root.certificate)]
    assert bundle.signing_key_id == old_signer.key_id
    assert bundle.jwks()["spiffe_sequence"] == 2
    assert len(bundle.jwks()["keys"]) == 2
    signer = store.signing_authority(runtime.kek())
    assert signer.key_id == old_signer.key_id
    assert der(signer.certificate) == der(old_signer.certificate)


def test_trusted_issuers_lists_roots_and_intermediates_of_both_generations(
    store: AuthorityStore, runtime: CaRuntime
) -> None:
    old_signer = store.signing_authority(runtime.kek())
    assert sorted(der(c) for c in store.trusted_issuers()) == sorted(
        der(c) for c in old_signer.chain_for_leaf
    )
    root, intermediate, rows = new_pair()

    store.prepare(runtime.kek(), rows, actor=ROTATOR, now=utc_now())

    assert sorted(der(c) for c in store.trusted_issuers()) == sorted(
        der(c) for c in (*old_signer.chain_for_leaf, root.certificate, intermediate.certificate)
    )


@pytest.mark.parametrize(
    ("state", "trusted"),
    [
        pytest.param(AuthorityState.PREPARED, True, id="prepared"),
        pytest.param(AuthorityState.ACTIVE, True, id="active"),
        pytest.param(AuthorityState.RETIRED, False, id="retired"),
        pytest.param(AuthorityState.REVOKED, False, id="revoked"),
    ],
)
def test_only_trusted_states_are_issuers_and_bundle_roots(
    store: AuthorityStore, runtime: CaRuntime, state: AuthorityState, trusted: bool
) -> None:
    root, intermediate, rows = new_pair()
    store.prepare(runtime.kek(), rows, actor=ROTATOR, now=utc_now())
    with runtime.engine.begin() as conn:
        conn.execute(
            update(Authority)
            .where(Authority.id.in_([root.key_id, intermediate.key_id]))
            .values(state=state.value)
        )

    issuers = {der(c) for c in store.trusted_issuers()}
    roots = {der(c) for c in store.bundle().roots}

    assert (der(root.certificate) in issuers) is trusted
    assert (der(intermediate.certificate) in issuers) is trusted
    assert (der(root.certificate) in roots) is trusted
    assert der(intermediate.certificate) not in roots  # the bundle holds roots only


def test_each_prepare_bumps_the_sequence_again(store: AuthorityStore, runtime: CaRuntime) -> None:
    sequences = [
        store.prepare(runtime.kek(), new_pair()[2], actor=ROTATOR, now=utc_now()).sequence
        for _ in range(3)
    ]
    assert sequences == [2, 3, 4]
    assert store.bundle_sequence() == 4
    assert len(store.bundle().roots) == 4


def test_prepare_with_the_wrong_kek_is_refused_and_writes_nothing(
    store: AuthorityStore,
) -> None:
    before = snapshot(store)
    stored_kek_id = store.require_identity().kek_id
    wrong = KeyEncryptionKey(new_kek_material())

    with pytest.raises(ConfigurationError) as info:
        store.prepare(wrong, new_pair()[2], actor="intruder", now=utc_now())

    assert info.value.reason == "kek_mismatch"
    assert stored_kek_id in info.value.message
    assert wrong.id in info.value.message
    assert snapshot(store) == before
    assert store.bundle_sequence() == 1


def test_preparing_an_authority_already_stored_changes_nothing(
    store: AuthorityStore, runtime: CaRuntime
) -> None:
    _root, _intermediate, rows = new_pair()
    store.prepare(runtime.kek(), rows, actor=ROTATOR, now=utc_now())
    before = snapshot(store)

    with pytest.raises(MeshcaError):
        store.prepare(runtime.kek(), rows, actor="again", now=utc_now())

    assert snapshot(store) == before
    assert store.bundle_sequence() == 2


def test_prepare_on_an_uninitialised_database_is_refused(db_url: str, tmp_path: Path) -> None:
    rt = CaRuntime(Settings(db_url=db_url, kek_file=tmp_path / "kek"))
    try:
        migrate.upgrade(rt.engine)
        with pytest.raises(ConfigurationError) as info:
            rt.authorities.prepare(
                KeyEncryptionKey(new_kek_material()), new_pair()[2], actor=ROTATOR, now=utc_now()
            )
        assert info.value.reason == "not_initialised"
        assert rt.authorities.bundle_sequence() is None
        assert rt.authorities.authorities() == []
    finally:
        rt.engine.dispose()
