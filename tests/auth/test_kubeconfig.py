"""Loading the CA's access to the Kubernetes API: kubeconfig files and the in-cluster config."""

from __future__ import annotations

import base64
import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.auth.kubeconfig import (
    ClusterAccess,
    in_cluster,
    load_kubeconfig,
    request_headers,
    ssl_context,
)
from ca.core.errors import ConfigurationError

SERVER = "https://203.0.113.10:6443"


def self_signed(common_name: str = "test") -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a self-signed CA certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder(subject_name=name, issuer_name=name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_config(
    path: Path,
    user: dict[str, Any],
    cluster: dict[str, Any] | None = None,
    *,
    extra_contexts: list[dict[str, Any]] | None = None,
    current: str | None = "main",
) -> Path:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": SERVER} if cluster is None else cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "main", "context": {"cluster": "c", "user": "u"}}]
        + (extra_contexts or []),
    }
    if current is not None:
        doc["current-context"] = current
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def config_error(path: Path, context: str | None = None) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        load_kubeconfig(path, context)
    return info.value


# --- credentials ---


def test_a_static_token(tmp_path: Path):
    access = load_kubeconfig(write_config(tmp_path / "config", {"token": "ca-token"}))
    assert access.server == SERVER
    assert request_headers(access) == {"Authorization": "Bearer ca-token"}
    assert "ca-token" not in repr(access)


def test_a_token_file_is_read_again_for_every_request(tmp_path: Path):
    (tmp_path / "token").write_text("first\n")
    access = load_kubeconfig(write_config(tmp_path / "config", {"tokenFile": "token"}))
    assert access.token_file == tmp_path / "token"
    assert request_headers(access) == {"Authorization": "Bearer first"}
    (tmp_path / "token").write_text("second\n")
    assert request_headers(access) == {"Authorization": "Bearer second"}


def test_a_token_file_wins_over_a_token(tmp_path: Path):
    (tmp_path / "token").write_text("from-file")
    user = {"token": "inline", "tokenFile": str(tmp_path / "token")}
    access = load_kubeconfig(write_config(tmp_path / "config", user))
    assert request_headers(access) == {"Authorization": "Bearer from-file"}


def test_client_certificate_data(tmp_path: Path):
    cert, key = self_signed("meshca")
    ca, _ = self_signed("cluster CA")
    user = {"client-certificate-data": b64(cert), "client-key-data": b64(key)}
    cluster = {"server": SERVER, "certificate-authority-data": b64(ca)}
    access = load_kubeconfig(write_config(tmp_path / "config", user, cluster))
    assert (access.client_cert_pem, access.client_key_pem, access.ca_pem) == (cert, key, ca)
    assert request_headers(access) == {}
    assert b"PRIVATE KEY" not in repr(access).encode()
    ctx = ssl_context(access)  # the key matches the certificate and the CA parses
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname


def test_relative_paths_are_relative_to_the_kubeconfig(tmp_path: Path, monkeypatch: Any):
    cert, key = self_signed("meshca")
    ca, _ = self_signed("cluster CA")
    certs = tmp_path / "kube" / "certs"
    certs.mkdir(parents=True)
    (certs / "client.crt").write_bytes(cert)
    (certs / "client.key").write_bytes(key)
    (certs / "ca.crt").write_bytes(ca)
    user = {"client-certificate": "certs/client.crt", "client-key": "certs/client.key"}
    cluster = {"server": SERVER, "certificate-authority": "certs/ca.crt"}
    config = write_config(tmp_path / "kube" / "config", user, cluster)
    monkeypatch.chdir(tmp_path)  # not the kubeconfig's directory
    access = load_kubeconfig(config)
    assert access.client_cert_file == certs / "client.crt"
    assert access.client_key_file == certs / "client.key"
    assert access.ca_file == certs / "ca.crt"
    ssl_context(access)


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path: Path):
    cert, _ = self_signed("meshca")
    _, other_key = self_signed("other")
    user = {"client-certificate-data": b64(cert), "client-key-data": b64(other_key)}
    access = load_kubeconfig(write_config(tmp_path / "config", user))
    with pytest.raises(ConfigurationError) as info:
        ssl_context(access)
    assert info.value.reason == "kubeconfig_bad_client_cert"


def test_a_certificate_authority_that_is_not_pem_is_refused(tmp_path: Path):
    cluster = {"server": SERVER, "certificate-authority-data": b64(b"not a certificate")}
    access = load_kubeconfig(write_config(tmp_path / "config", {"token": "t"}, cluster))
    with pytest.raises(ConfigurationError) as info:
        ssl_context(access)
    assert info.value.reason == "kubeconfig_bad_ca"


def test_a_context_can_be_chosen(tmp_path: Path):
    other = {"name": "other", "context": {"cluster": "c", "user": "u"}}
    config = write_config(tmp_path / "config", {"token": "t"}, extra_contexts=[other], current=None)
    assert "context other" in load_kubeconfig(config, "other").source
    assert "no current-context" in config_error(config).message
    assert "no context named 'missing'" in config_error(config, "missing").message


def test_insecure_skip_tls_verify_is_honoured_only_when_asked(tmp_path: Path):
    cluster = {"server": SERVER, "insecure-skip-tls-verify": True}
    access = load_kubeconfig(write_config(tmp_path / "config", {"token": "t"}, cluster))
    assert ssl_context(access).verify_mode == ssl.CERT_NONE
    ca, _ = self_signed()
    cluster["certificate-authority-data"] = b64(ca)
    config = write_config(tmp_path / "config", {"token": "t"}, cluster)
    assert "exclude each other" in config_error(config).message


# --- refused kubeconfigs ---


@pytest.mark.parametrize(
    ("plugin", "config"),
    [
        ("exec", {"apiVersion": "client.authentication.k8s.io/v1", "command": "aws"}),
        ("auth-provider", {"name": "gcp"}),
    ],
)
def test_credential_plugins_are_refused(tmp_path: Path, plugin: str, config: dict[str, Any]):
    path = write_config(tmp_path / "config", {plugin: config})
    error = config_error(path)
    assert error.reason == "kubeconfig_unsupported"
    assert f"'{plugin}' credential plugins are not supported" in error.message
    assert str(path) in error.message
    assert "user u" in error.message


def test_basic_auth_is_refused(tmp_path: Path):
    user = {"username": "admin", "password": "s3cret-pw"}
    error = config_error(write_config(tmp_path / "config", user))
    assert error.reason == "kubeconfig_unsupported"
    assert "basic auth" in error.message
    assert "s3cret-pw" not in error.message


@pytest.mark.parametrize(
    ("user", "cluster", "expected"),
    [
        ({"token": "t"}, {}, "cluster c: missing field 'server'"),
        ({"token": "t"}, {"server": "http://10.0.0.1:8080"}, "must be an https:// URL"),
        ({}, None, "no client credentials"),
        ({"client-certificate-data": b64(b"x")}, None, "needs its key"),
        ({"tokenFile": "absent"}, None, "tokenFile file"),
        ({"token": "t"}, {"server": SERVER, "certificate-authority": "ca.crt"}, "ca.crt"),
        ({"client-key-data": "%%%", "client-certificate-data": "eA=="}, None, "not valid base64"),
        ({"token": ["t"]}, None, "'token' must be a string"),
    ],
)
def test_incomplete_kubeconfigs_are_refused_precisely(
    tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any] | None, expected: str
):
    path = write_config(tmp_path / "config", user, cluster)
    error = config_error(path)
    assert expected in error.message
    assert str(path) in error.message


def test_data_and_file_for_the_same_item_are_refused(tmp_path: Path):
    ca, _ = self_signed()
    (tmp_path / "ca.crt").write_bytes(ca)
    cluster = {
        "server": SERVER,
        "certificate-authority": "ca.crt",
        "certificate-authority-data": b64(ca),
    }
    error = config_error(write_config(tmp_path / "config", {"token": "t"}, cluster))
    assert "both 'certificate-authority' and 'certificate-authority-data'" in error.message


def test_an_empty_token_file_is_refused_at_load(tmp_path: Path):
    (tmp_path / "token").write_text("\n")
    error = config_error(write_config(tmp_path / "config", {"tokenFile": "token"}))
    assert error.reason == "kubeconfig_token_file"
    assert "is empty" in error.message


def test_a_context_naming_a_missing_cluster_is_refused(tmp_path: Path):
    broken = {"name": "broken", "context": {"cluster": "nowhere", "user": "u"}}
    config = write_config(tmp_path / "config", {"token": "t"}, extra_contexts=[broken])
    assert "no cluster named 'nowhere'" in config_error(config, "broken").message


@pytest.mark.parametrize(
    ("text", "expected"),
    [("clusters: [", "not valid YAML"), ("- a list", "expected a mapping")],
)
def test_a_file_that_is_not_a_kubeconfig_is_refused(tmp_path: Path, text: str, expected: str):
    (tmp_path / "config").write_text(text)
    assert expected in config_error(tmp_path / "config").message


def test_a_missing_kubeconfig_is_named(tmp_path: Path):
    error = config_error(tmp_path / "nope")
    assert error.reason == "kubeconfig_unreadable"
    assert str(tmp_path / "nope") in error.message


# --- in-cluster ---


def service_account_dir(tmp_path: Path, token: str = "sa-token") -> Path:
    ca, _ = self_signed()
    (tmp_path / "token").write_text(token)
    (tmp_path / "ca.crt").write_bytes(ca)
    return tmp_path


ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def test_in_cluster_config(tmp_path: Path):
    access = in_cluster(service_account_dir(tmp_path), ENV)
    assert access.server == "https://10.96.0.1:443"
    assert access.ca_file == tmp_path / "ca.crt"
    assert request_headers(access) == {"Authorization": "Bearer sa-token"}
    (tmp_path / "token").write_text("rotated")  # the kubelet refreshes projected tokens
    assert request_headers(access) == {"Authorization": "Bearer rotated"}
    assert ssl_context(access).verify_mode == ssl.CERT_REQUIRED


def test_in_cluster_ipv6_service_host(tmp_path: Path):
    env = ENV | {"KUBERNETES_SERVICE_HOST": "fd00:10:96::1"}
    assert in_cluster(service_account_dir(tmp_path), env).server == "https://[fd00:10:96::1]:443"


def test_in_cluster_outside_a_pod_is_refused(tmp_path: Path):
    with pytest.raises(ConfigurationError) as info:
        in_cluster(service_account_dir(tmp_path), {})
    assert "KUBERNETES_SERVICE_HOST" in info.value.message


@pytest.mark.parametrize("missing", ["token", "ca.crt"])
def test_in_cluster_without_mounted_credentials_is_refused(tmp_path: Path, missing: str):
    (service_account_dir(tmp_path) / missing).unlink()
    with pytest.raises(ConfigurationError) as info:
        in_cluster(tmp_path, ENV)
    assert str(tmp_path / missing) in info.value.message


def test_cluster_access_refuses_plain_http():
    with pytest.raises(ConfigurationError) as info:
        ClusterAccess(server="http://127.0.0.1:8080", token="t")
    assert "https://" in info.value.message
