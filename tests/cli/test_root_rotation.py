"""``meshca root prepare|activate|retire|revoke|status`` and ``meshca audit events``: the
admin's rotation procedure through the real console script, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.cli.helpers import (
    ADMIN_REQUESTER,
    Meshca,
    assert_error,
    openssl_verify,
    pem_certs,
    write_csr,
)
from tests.cli.test_cacerts import write_istio_cacerts
from tests.factories import make_ca

CART = "spiffe://cluster.local/ns/shop/sa/cart"
HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def admin(request: pytest.FixtureRequest, tmp_path: Path) -> Meshca:
    """``meshca`` with ``--db`` set (by environment) to a fresh CA's database."""
    url = (
        f"sqlite:///{tmp_path / 'meshca.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    meshca = Meshca(tmp_path, env={"MESHCA_DB_URL": url})
    meshca("ca", "init")
    return meshca


def status(meshca: Meshca) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(meshca("root", "status", "--format", "json").stdout)
    return result


def by_role(summary: dict[str, Any], state: str) -> dict[str, dict[str, Any]]:
    return {a["role"]: a for a in summary["authorities"] if a["state"] == state}


def sign(meshca: Meshca, tmp_path: Path, name: str) -> list[Any]:
    csr = write_csr(tmp_path / f"{name}.csr")
    return pem_certs(meshca("ca", "sign", "--csr", csr, "--spiffe-id", CART).stdout)


def test_prepare_activate_retire_moves_trust_and_signing(admin: Meshca, tmp_path: Path) -> None:
    before = status(admin)
    old = by_role(before, "active")
    assert before["signing_key_id"] == old["intermediate"]["id"]
    assert old["intermediate"]["signing"] == "yes"

    prepared = admin("root", "prepare", "--ttl", "30d")
    new_ids = HEX32.findall(prepared.stdout)
    assert len(new_ids) == 2, prepared.stdout
    after_prepare = status(admin)
    new = by_role(after_prepare, "prepared")
    assert {new["root"]["id"], new["intermediate"]["id"]} == set(new_ids)
    assert after_prepare["bundle_sequence"] == before["bundle_sequence"] + 1
    assert set(after_prepare["trusted_root_ids"]) == {old["root"]["id"], new["root"]["id"]}
    assert after_prepare["signing_key_id"] == old["intermediate"]["id"], "prepare must not sign"
    bundle = pem_certs(admin("root", "bundle").stdout)
    assert len(bundle) == 2
    old_chain = sign(admin, tmp_path, "before")
    assert old_chain[1].subject.rfc4514_string() == old["intermediate"]["subject"]

    activated = admin("root", "activate")
    assert "signs from now on" in activated.stdout
    after_activate = status(admin)
    assert after_activate["signing_key_id"] == new["intermediate"]["id"]
    assert after_activate["bundle_sequence"] == after_prepare["bundle_sequence"] + 1
    new_chain = sign(admin, tmp_path, "after")
    assert new_chain[1].subject.rfc4514_string() == new["intermediate"]["subject"]
    openssl_verify(tmp_path, new_chain, admin("root", "bundle").stdout)

    # The admin's own certificate from the old authority has no pod: it is in use until it
    # expires, so retiring needs --force, and the refusal says who holds what.
    old_root = {a["id"]: a for a in after_activate["authorities"]}[old["root"]["id"]]
    assert (old_root["active_certs"], old_root["in_use"]) == (1, 1)
    refused = admin("root", "retire", check=False)
    assert_error(refused, 4, "1 unexpired certificate", CART, "--force")
    assert status(admin)["bundle_sequence"] == after_activate["bundle_sequence"]

    admin("root", "retire", "--force")
    final = status(admin)
    assert final["trusted_root_ids"] == [new["root"]["id"]]
    states = {a["id"]: a["state"] for a in final["authorities"]}
    assert states[old["root"]["id"]] == states[old["intermediate"]["id"]] == "retired"
    assert len(pem_certs(admin("root", "bundle").stdout)) == 1

    events = json.loads(admin("audit", "events", "--format", "json", "--limit", "50").stdout)
    done = [(e["action"], e["authority_id"]) for e in events if e["outcome"] == "done"]
    assert ("prepare", new["root"]["id"]) in done
    assert ("activate", new["intermediate"]["id"]) in done
    assert ("retire", old["root"]["id"]) in done
    refusals = [e for e in events if e["outcome"] == "refused"]
    assert [e["action"] for e in refusals] == ["retire"]
    assert "authority_in_use" in refusals[0]["detail"]
    assert {e["actor"] for e in events if e["action"] != "init"} == {ADMIN_REQUESTER}
    assert "forced with 1 certificate(s) in use" in {e["detail"] for e in events}


def test_activate_again_rolls_back_to_the_old_authority(admin: Meshca) -> None:
    old = by_role(status(admin), "active")
    admin("root", "prepare")
    admin("root", "activate")
    rollback = admin("root", "activate", old["root"]["id"][:10])
    assert old["intermediate"]["id"] in rollback.stdout
    assert status(admin)["signing_key_id"] == old["intermediate"]["id"]
    again = admin("root", "activate", old["root"]["id"])
    assert "already signs" in again.stdout


def test_revoke_distrusts_at_once_and_refuses_the_signer(admin: Meshca) -> None:
    old = by_role(status(admin), "active")
    admin("root", "prepare")
    new = by_role(status(admin), "prepared")
    assert_error(
        admin("root", "revoke", old["root"]["id"], check=False),
        4,
        "signs certificates now",
        "activate another authority first",
    )
    admin("root", "activate")
    revoked = admin("root", "revoke", old["root"]["id"])
    assert "active -> revoked" in revoked.stdout
    summary = status(admin)
    assert summary["trusted_root_ids"] == [new["root"]["id"]]
    assert set(summary["revoked_key_ids"]) == {old["root"]["id"], old["intermediate"]["id"]}
    assert_error(admin("root", "revoke", old["root"]["id"], check=False), 4, "already revoked")


def test_unknown_and_ambiguous_ids_are_refused_clearly(admin: Meshca) -> None:
    assert_error(admin("root", "activate", "ffff", check=False), 4, "no CA authority has id")
    assert_error(admin("root", "activate", check=False), 4, "no prepared root to activate")
    admin("root", "prepare")
    admin("root", "prepare")
    assert_error(admin("root", "activate", check=False), 4, "give an ID")
    assert_error(admin("root", "activate", "", check=False), 4)


def test_prepare_imports_ca_material_from_a_directory(admin: Meshca, tmp_path: Path) -> None:
    root, intermediate = make_ca()
    cacerts = write_istio_cacerts(tmp_path / "cacerts", root, intermediate)
    prepared = admin("root", "prepare", "--from-dir", cacerts)
    ids = HEX32.findall(prepared.stdout)
    summary = status(admin)
    imported = {a["id"]: a for a in summary["authorities"] if a["id"] in ids}
    assert {a["state"] for a in imported.values()} == {"prepared"}
    admin("root", "activate", next(i for i, a in imported.items() if a["role"] == "root"))
    chain = sign(admin, tmp_path, "imported")
    openssl_verify(tmp_path, chain, admin("root", "bundle").stdout)
    assert status(admin)["signing_key_id"] == intermediate.key_id
    assert chain[1:] == [intermediate.certificate, root.certificate]
    # The same material again: nothing new to store.
    assert_error(admin("root", "prepare", "--from-dir", cacerts, check=False), 4, "already stored")


def test_reinstate_undoes_a_retirement_but_never_a_revocation(admin: Meshca) -> None:
    old = by_role(status(admin), "active")
    admin("root", "prepare")
    admin("root", "activate")
    admin("root", "retire")
    assert_error(
        admin("root", "activate", old["root"]["id"], check=False), 4, "meshca root reinstate"
    )

    reinstated = admin("root", "reinstate", old["root"]["id"][:12])
    assert "retired -> prepared" in reinstated.stdout
    summary = status(admin)
    assert old["root"]["id"] in summary["trusted_root_ids"]
    admin("root", "activate", old["root"]["id"])
    assert status(admin)["signing_key_id"] == old["intermediate"]["id"]

    new_root = next(
        a["id"]
        for a in status(admin)["authorities"]
        if a["role"] == "root" and a["signing"] == "" and a["id"] != old["root"]["id"]
    )
    admin("root", "revoke", new_root)
    assert_error(admin("root", "reinstate", new_root, check=False), 4, "never trusted again")
    events = json.loads(
        admin("audit", "events", "--action", "reinstate", "--format", "json").stdout
    )
    done = {e["authority_id"] for e in events if e["outcome"] == "done"}
    assert done == {old["root"]["id"], old["intermediate"]["id"]}
    assert [e["authority_id"] for e in events if e["outcome"] == "refused"] == [new_root]
