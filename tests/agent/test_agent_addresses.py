"""``meshca agent`` refuses an address without a port (gRPC would quietly dial port 443) or with
one no TCP port can have, like every other bad agent setting: exit 3 and one ``meshca: error:``
line naming the setting and the address, before it opens a socket or calls a CA."""

from __future__ import annotations

from pathlib import Path

import pytest

from ca.core.errors import ConfigurationError
from ca.settings import load_into
from sds.settings import AgentSettings
from tests.agent.test_agent_cli import offline_args
from tests.cli.helpers import Meshca, assert_error


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Local input that is fine (none of it is read before the addresses are checked)."""
    (tmp_path / "root.pem").write_text("not read\n")
    (tmp_path / "token").write_text("header.payload.signature\n")
    return {"root": tmp_path / "root.pem", "token": tmp_path / "token", "sds": tmp_path / "s.sock"}


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        ({"ca_address": "localhost"}, "ca_address: CA address 'localhost' has no port"),
        ({"ca_address": "127.0.0.1:1,meshca:0"}, "ca_address: CA address 'meshca:0': port 0"),
        ({"ca_mtls_address": "meshca.svc"}, "ca_mtls_address: CA address 'meshca.svc' has no"),
        ({"metrics_listen": "127.0.0.1:99999"}, "metrics_listen: address '127.0.0.1:99999'"),
        ({"metrics_listen": "garbage"}, "metrics_listen: address 'garbage' has no port"),
    ],
    ids=["no-port", "port-zero", "mtls-no-port", "metrics-port-too-big", "metrics-garbage"],
)
def test_an_address_without_a_usable_port_is_a_configuration_error(
    tmp_path: Path, files: dict[str, Path], flags: dict[str, str], problem: str
) -> None:
    result = Meshca(tmp_path)(*offline_args(files, **flags), check=False)

    assert_error(result, 3, f"invalid settings: {problem}")
    assert not files["sds"].exists()


def test_the_environment_is_checked_like_the_flags(tmp_path: Path, files: dict[str, Path]) -> None:
    args = offline_args(files)
    del args[1:3]  # --ca-address comes from MESHCA_CA_ADDRESS
    env = {"MESHCA_CA_ADDRESS": "meshca-a:15012,meshca-b"}
    result = Meshca(tmp_path)(*args, env=env, check=False)

    assert_error(result, 3, "ca_address: CA address 'meshca-b' has no port")


def test_host_and_port_addresses_are_accepted(files: dict[str, Path]) -> None:
    settings = load_into(
        AgentSettings,
        ca_address=["meshca.meshca-system.svc:15012", "[fd00::1]:15012", "10.0.0.7:443"],
        ca_mtls_address=["meshca:15013"],
        ca_root=files["root"],
        token_file=files["token"],
        sds_socket=files["sds"],
        metrics_listen="[::1]:0",
    )
    assert settings.ca_address[1] == "[fd00::1]:15012"
    with pytest.raises(ConfigurationError, match="has no port"):
        load_into(
            AgentSettings,
            ca_address=["meshca"],
            ca_root=files["root"],
            token_file=files["token"],
            sds_socket=files["sds"],
        )
