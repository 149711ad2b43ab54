"""Envelope encryption of CA private keys at rest: AES-256-GCM under a key-encryption key.

The ciphertext is bound to what it protects (the associated data is the authority's id), so a
ciphertext copied onto another row fails to decrypt. Each KEK has a short public id so that a
wrong KEK is reported as such rather than as corrupt data.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ca.core.errors import ConfigurationError

KEK_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_FORMAT = b"mkek1:"


class KeyEncryptionKey:
    """A 256-bit AES-GCM key. Its bytes never appear in ``repr`` or messages."""

    __slots__ = ("_aead", "id")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEK_BYTES:
            raise ConfigurationError(
                "kek_invalid", f"a key-encryption key must be {KEK_BYTES} bytes, not {len(key)}"
            )
        self._aead = AESGCM(key)
        self.id = hashlib.sha256(b"meshca-kek-id:" + key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"KeyEncryptionKey(id={self.id!r})"

    @classmethod
    def from_text(cls, text: str) -> KeyEncryptionKey:
        """Parse the KEK file format: the key in base64 (surrounding whitespace ignored)."""
        try:
            return cls(base64.b64decode(text.strip(), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ConfigurationError(
                "kek_invalid", "the key-encryption key is not valid base64 of 32 bytes"
            ) from exc

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _FORMAT + nonce + self._aead.encrypt(nonce, plaintext, associated_data)

    def decrypt(self, ciphertext: bytes, associated_data: bytes) -> bytes:
        if not ciphertext.startswith(_FORMAT):
            raise ConfigurationError("kek_decrypt_failed", "encrypted CA key has an unknown format")
        body = ciphertext[len(_FORMAT) :]
        if len(body) < _NONCE_BYTES + _TAG_BYTES:
            raise ConfigurationError("kek_decrypt_failed", "encrypted CA key is truncated")
        nonce, sealed = body[:_NONCE_BYTES], body[_NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, sealed, associated_data)
        except InvalidTag as exc:
            raise ConfigurationError(
                "kek_decrypt_failed",
                f"CA key could not be decrypted with KEK {self.id}: wrong KEK or tampered data",
            ) from exc


def new_kek_material() -> bytes:
    """Fresh random bytes for a new KEK."""
    return AESGCM.generate_key(bit_length=KEK_BYTES * 8)


def kek_to_text(key: bytes) -> str:
    """The KEK file format for ``key``."""
    return base64.b64encode(key).decode() + "\n"
