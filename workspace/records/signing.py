"""Who wrote a record: Ed25519 signatures by the workspace that wrote it, and the keys a group trusts.

Each workspace has its own key (`.cdw/keys/ed25519.pem`, created on first use, never committed). A record's
writer appends a signature line over every byte before it whenever it closes the record. The public keys a
group trusts are listed in the project's committed file (`records/trusted_keys.txt` of the checkout, never one in
a folder `CDW_RECORDS_DIR` points at; `CDW_TRUSTED_KEYS` moves it), one per line: `ed25519:<base64 public key>
<who>`. The leaderboard certifies only records signed by a trusted key, so a hand-written or edited record, or one
signed by a stranger, is shown as unverified (ARCHITECTURE.md “Benchmarks and certification”).

`cdw keys` shows this workspace's public key line, to add to the trusted list by a commit the group reviews.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from servers.settings import paths

PREFIX = "ed25519:"


class SigningError(RuntimeError):
    """The key cannot be read or made, or the trusted-keys file is malformed."""


def key_path() -> Path:
    """This workspace's private key (`CDW_KEYS_DIR` moves the folder; default `.cdw/keys/`)."""
    return paths().keys / "ed25519.pem"


def _load_or_create() -> Ed25519PrivateKey:
    path = key_path()
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as e:
            raise SigningError(f"{path} is not an Ed25519 private key ({e}); move it away to make a new one") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningError(f"{path} is not an Ed25519 private key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    try:
        os.link(tmp, path)  # never replaces a key another process made meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return _load_or_create() if path.exists() else key


def _public_text(pub: Ed25519PublicKey) -> str:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PREFIX + base64.b64encode(raw).decode()


def public_key() -> str:
    """This workspace's public key, as written in records and in the trusted-keys file."""
    return _public_text(_load_or_create().public_key())


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sign(data: bytes) -> tuple[str, str]:
    """(public key, base64 signature) of `data` with this workspace's key."""
    key = _load_or_create()
    return _public_text(key.public_key()), base64.b64encode(key.sign(data)).decode()


def check(data: bytes, key: str, signature: str) -> bool:
    """Whether `signature` is `key`'s signature of `data`."""
    try:
        if not key.startswith(PREFIX):
            return False
        pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(key[len(PREFIX) :], validate=True))
        pub.verify(base64.b64decode(signature, validate=True), data)
        return True
    except (InvalidSignature, ValueError):
        return False


def trusted_keys_file() -> Path:
    """The committed list of trusted public keys (`CDW_TRUSTED_KEYS` moves it; default `records/trusted_keys.txt`)."""
    return paths().trusted_keys


@dataclass(frozen=True)
class TrustedKey:
    key: str
    who: str


def trusted_keys() -> dict[str, TrustedKey]:
    """The keys the group trusts (empty when the file does not exist)."""
    path = trusted_keys_file()
    if not path.exists():
        return {}
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, who = line.partition(" ")
        if not key.startswith(PREFIX):
            raise SigningError(f"{path}, line {n}: expected `{PREFIX}<base64 key> <who>`")
        out[key] = TrustedKey(key, who.strip())
    return out
