"""Envelope encryption of CA keys: round trips, and every way decryption must fail closed."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from ca.core.errors import ConfigurationError
from ca.core.kek import KeyEncryptionKey, kek_to_text, new_kek_material
from ca.core.keys import KeyType, private_key_from_der, private_key_to_der
from tests.core.builders import KeyBank

AD = b"authority:0b6f9f0e-root"


@pytest.fixture
def material() -> bytes:
    return new_kek_material()


@pytest.fixture
def kek(material: bytes) -> KeyEncryptionKey:
    return KeyEncryptionKey(material)


@pytest.mark.parametrize("key_type", list(KeyType), ids=str)
def test_round_trips_a_ca_private_key(
    kek: KeyEncryptionKey, key_bank: KeyBank, key_type: KeyType
) -> None:
    plaintext = private_key_to_der(key_bank.key(key_type, "root"))

    ciphertext = kek.encrypt(plaintext, AD)

    assert plaintext not in ciphertext
    assert kek.decrypt(ciphertext, AD) == plaintext
    restored = private_key_from_der(kek.decrypt(ciphertext, AD))
    assert private_key_to_der(restored) == plaintext


def test_each_encryption_uses_a_fresh_nonce(kek: KeyEncryptionKey) -> None:
    assert kek.encrypt(b"same", AD) != kek.encrypt(b"same", AD)


def test_the_same_material_decrypts_after_a_restart(material: bytes) -> None:
    ciphertext = KeyEncryptionKey(material).encrypt(b"ca key", AD)

    reloaded = KeyEncryptionKey.from_text(kek_to_text(material))

    assert reloaded.decrypt(ciphertext, AD) == b"ca key"
    assert reloaded.id == KeyEncryptionKey(material).id


def _flip(index: int) -> Callable[[bytes], bytes]:
    def tamper(ciphertext: bytes) -> bytes:
        return ciphertext[:index] + bytes([ciphertext[index] ^ 0x80]) + ciphertext[index + 1 :]

    return tamper


TAMPERINGS: dict[str, Callable[[bytes], bytes]] = {
    "nonce-byte-flipped": _flip(len(b"mkek1:")),
    "body-byte-flipped": _flip(len(b"mkek1:") + 12),
    "tag-byte-flipped": _flip(-1),
    "last-byte-dropped": lambda c: c[:-1],
    "byte-appended": lambda c: c + b"\x00",
    "format-prefix-changed": lambda c: b"mkek2:" + c[len(b"mkek1:") :],
    "format-prefix-stripped": lambda c: c[len(b"mkek1:") :],
    "empty": lambda c: b"",
}


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_tampered_ciphertext_is_refused(
    kek: KeyEncryptionKey, tamper: Callable[[bytes], bytes]
) -> None:
    ciphertext = kek.encrypt(b"ca key", AD)

    with pytest.raises(ConfigurationError) as excinfo:
        kek.decrypt(tamper(ciphertext), AD)

    assert excinfo.value.reason == "kek_decrypt_failed"


@pytest.mark.parametrize("keep", [0, 5], ids=["prefix-only", "inside-the-nonce"])
def test_ciphertext_truncated_inside_the_nonce_is_refused(kek: KeyEncryptionKey, keep: int) -> None:
    ciphertext = kek.encrypt(b"ca key", AD)
    truncated = ciphertext[: len(b"mkek1:") + keep]

    with pytest.raises(ConfigurationError) as excinfo:
        kek.decrypt(truncated, AD)

    assert excinfo.value.reason == "kek_decrypt_failed"


def test_wrong_kek_is_refused_and_named(kek: KeyEncryptionKey) -> None:
    other = KeyEncryptionKey(new_kek_material())
    ciphertext = kek.encrypt(b"ca key", AD)

    with pytest.raises(ConfigurationError) as excinfo:
        other.decrypt(ciphertext, AD)

    assert excinfo.value.reason == "kek_decrypt_failed"
    assert other.id in excinfo.value.message
    assert other.id != kek.id


def test_ciphertext_moved_to_another_row_is_refused(kek: KeyEncryptionKey) -> None:
    ciphertext = kek.encrypt(b"ca key", AD)

    with pytest.raises(ConfigurationError) as excinfo:
        kek.decrypt(ciphertext, b"authority:another-row")

    assert excinfo.value.reason == "kek_decrypt_failed"


def test_repr_and_messages_never_contain_the_key(material: bytes) -> None:
    kek = KeyEncryptionKey(material)
    with pytest.raises(ConfigurationError) as excinfo:
        kek.decrypt(KeyEncryptionKey(new_kek_material()).encrypt(b"x", AD), AD)

    shown = [repr(kek), str(kek), excinfo.value.message, str(excinfo.value)]

    for text in shown:
        for encoding in (material.hex(), base64.b64encode(material).decode(), repr(material)):
            assert encoding not in text
    assert kek.id in repr(kek)
    assert not hasattr(kek, "__dict__")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("not base64!", id="not-base64"),
        pytest.param(base64.b64encode(b"k" * 16).decode(), id="16-bytes"),
        pytest.param(base64.b64encode(b"k" * 31).decode(), id="31-bytes"),
        pytest.param(base64.b64encode(b"k" * 33).decode(), id="33-bytes"),
        pytest.param(base64.b64encode(b"k" * 64).decode(), id="64-bytes"),
        pytest.param(base64.b64encode(b"k" * 32).decode()[:-1], id="truncated-base64"),
        pytest.param(base64.urlsafe_b64encode(b"\xff" * 32).decode(), id="urlsafe-alphabet"),
    ],
)
def test_from_text_refuses_anything_but_base64_of_32_bytes(text: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        KeyEncryptionKey.from_text(text)

    assert excinfo.value.reason == "kek_invalid"


@pytest.mark.parametrize(
    "decorate",
    [
        pytest.param(lambda t: t, id="as-written"),
        pytest.param(lambda t: f"  {t.strip()}  \n\n", id="surrounding-whitespace"),
        pytest.param(lambda t: t.strip(), id="no-trailing-newline"),
    ],
)
def test_from_text_accepts_the_file_format(material: bytes, decorate: Callable[[str], str]) -> None:
    assert KeyEncryptionKey.from_text(decorate(kek_to_text(material))).id == (
        KeyEncryptionKey(material).id
    )


def test_new_material_is_256_random_bits() -> None:
    first, second = new_kek_material(), new_kek_material()

    assert len(first) == len(second) == 32
    assert first != second
