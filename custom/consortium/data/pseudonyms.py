"""Pseudonyms for patients and studies: a keyed hash (HMAC-SHA-256) whose key is made once per site and kept in
its data folder, so names and IDs never appear in a manifest and no one without the key can link them back."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

SALT_FILE = ".pseudonym_salt"  # in the site's data folder; never leaves it


def site_salt(data_dir: Path) -> bytes:
    """The site's pseudonym key: made once, kept in its data folder (mode 600), never sent anywhere."""
    path = data_dir / SALT_FILE
    if not path.is_file():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return bytes.fromhex(path.read_text().strip())


def pseudonym(salt: bytes, kind: str, value: str) -> str:
    return kind + hmac.new(salt, value.encode(), hashlib.sha256).hexdigest()[:12]
