"""WatchBundle over real TLS gRPC: the current trust bundle at once, then a push when the roots
change in the database (another replica or the admin CLI prepared a new root)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.api import methods
from ca.core.keys import key_id
from tests.cli.helpers import Meshca
from tests.server.conftest import Served, certificates, refusal
from tests.server.harness import prepare_new_root

DEADLINE = 10.0


class Watcher:
    """A WatchBundle stream read by a thread into a queue, so the test can wait with a deadline."""

    def __init__(self, served: Served, token: str | None) -> None:
        self._channel = served.ca.channel()
        metadata = [("authorization", f"Bearer {token}")] if token is not None else []
        self._stream = methods.watch_bundle(self._channel)(
            methods.WatchBundleRequest(), metadata=metadata, timeout=60
        )
        self._messages: queue.Queue[methods.TrustBundleMessage | grpc.RpcError] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self._stream:
                self._messages.put(message)
        except grpc.RpcError as error:
            self._messages.put(error)

    def next(self) -> methods.TrustBundleMessage:
        try:
            item = self._messages.get(timeout=DEADLINE)
        except queue.Empty:
            pytest.fail(f"no bundle message within {DEADLINE}s")
        if isinstance(item, grpc.RpcError):
            raise item
        return item

    def close(self) -> None:
        self._stream.cancel()
        self._thread.join(DEADLINE)
        self._channel.close()


@contextmanager
def watching(served: Served, token: str | None) -> Iterator[Watcher]:
    watcher = Watcher(served, token)
    try:
        yield watcher
    finally:
        watcher.close()


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _prepare_new_root(served: Served) -> x509.Certificate:
    return prepare_new_root(served.ca.settings)


def _root_bundle_cli(served: Served, workdir: Path) -> str:
    settings = served.ca.settings
    meshca = Meshca(workdir)
    return meshca("root", "bundle", "--db", settings.db_url, "--kek-file", settings.kek_file).stdout


def test_current_bundle_at_once_then_every_change(
    db_url: str, serve: Callable[..., Served], tmp_path: Path
) -> None:
    served = serve(db_url)
    chain = certificates(served.issue())

    with watching(served, served.minter.mint("istio-system", "istiod")) as watcher:
        first = watcher.next()

        assert first.trust_domain == "cluster.local"
        assert first.sequence == 1
        assert list(first.root_certificates) == [_pem(chain[2])]
        assert first.signing_key_id == key_id(chain[1].public_key())  # type: ignore[arg-type]

        new_root = _prepare_new_root(served)
        second = watcher.next()

    assert second.sequence > first.sequence
    assert list(second.root_certificates) == [_pem(chain[2]), _pem(new_root)]
    # exactly what `meshca root bundle` prints (one CLI run: it is the slow part of this test)
    assert "".join(second.root_certificates) == _root_bundle_cli(served, tmp_path)
    assert second.root_certificates[0] == first.root_certificates[0]
    # a prepared root is trusted, not signing: the signer is unchanged
    assert second.signing_key_id == first.signing_key_id
    # and issuance still chains to the old root
    assert certificates(served.issue())[2] == chain[2]


def test_two_concurrent_watchers_both_get_the_update(
    sqlite_url: str, serve: Callable[..., Served]
) -> None:
    served = serve(sqlite_url)
    with (
        watching(served, served.minter.mint("default", "a")) as a,
        watching(served, served.minter.mint("default", "b")) as b,
    ):
        assert a.next().sequence == b.next().sequence == 1
        new_root = _prepare_new_root(served)
        updates = [a.next(), b.next()]

    for update in updates:
        assert update.sequence == 2
        assert update.root_certificates[-1] == _pem(new_root)
        assert len(update.root_certificates) == 2


def test_a_new_watcher_starts_from_the_current_bundle(
    sqlite_url: str, serve: Callable[..., Served]
) -> None:
    served = serve(sqlite_url)
    _prepare_new_root(served)
    served.ca.call(served.ca.server.watch.check())  # type: ignore[union-attr]

    with watching(served, served.minter.mint()) as watcher:
        current = watcher.next()

    assert current.sequence == 2
    assert len(current.root_certificates) == 2


@pytest.mark.parametrize(
    "token",
    [None, "not-a-jwt"],
    ids=["no-token", "bad-token"],
)
def test_unauthenticated_watch_is_refused(
    sqlite_url: str, serve: Callable[..., Served], token: str | None
) -> None:
    served = serve(sqlite_url)
    with watching(served, token) as watcher, pytest.raises(grpc.RpcError) as info:
        watcher.next()
    failure = refusal(info.value)
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert failure.reason == ("token_missing" if token is None else "token_malformed")


def test_expired_token_cannot_watch(sqlite_url: str, serve: Callable[..., Served]) -> None:
    served = serve(sqlite_url)
    token = served.minter.mint(lifetime=-timedelta(minutes=5))
    with watching(served, token) as watcher, pytest.raises(grpc.RpcError) as info:
        watcher.next()
    failure = refusal(info.value)
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAUTHENTICATED, "token_expired")
    assert token not in failure.details


def test_stopping_the_server_ends_open_streams(
    sqlite_url: str, serve: Callable[..., Served]
) -> None:
    """Agents hold their streams forever; a stopping server must not wait on them past its
    grace period."""
    served = serve(sqlite_url)
    with watching(served, served.minter.mint()) as watcher:
        watcher.next()
        started = time.monotonic()
        served.ca.call(served.ca.server.stop(grace=0.5))
        assert time.monotonic() - started < 5
        with pytest.raises(grpc.RpcError) as info:
            watcher.next()
    assert info.value.code() in (  # type: ignore[attr-defined]
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
    )
