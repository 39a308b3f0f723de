"""The server secret that API keys are hashed under (HMAC-SHA256).

Production sets `API_KEY_HASH_SECRET` (the same value on every api replica and wherever
keys are created: otherwise a key created on one host is unknown to another). A local
or demo install with no secret set gets one generated once and kept in
`var/api_key_hash_secret` (mode 0600), so `make run` works out of the box; losing that
file makes every existing key unusable, so do not rely on it beyond one machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from shared.settings import Settings

SECRET_FILE = "api_key_hash_secret"
MIN_SECRET_CHARS = 16


class KeySecretError(ValueError):
    """The configured secret is unusable."""


@dataclass(frozen=True, slots=True)
class KeySecret:
    value: bytes
    source: Literal["env", "file"]


def load_key_secret(settings: Settings) -> KeySecret:
    """The configured secret, else the one under `var/` (created on first call)."""
    if settings.api_key_hash_secret:
        if len(settings.api_key_hash_secret) < MIN_SECRET_CHARS:
            raise KeySecretError(
                f"API_KEY_HASH_SECRET must be at least {MIN_SECRET_CHARS} characters"
            )
        return KeySecret(settings.api_key_hash_secret.encode(), "env")
    path = settings.var_dir / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: of several processes starting together, exactly one writes the secret.
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    value = ""
    for _ in range(50):  # another process may be between creating and writing the file
        value = path.read_text().strip()
        if value:
            break
        time.sleep(0.01)
    if len(value) < MIN_SECRET_CHARS:
        raise KeySecretError(
            f"{path} does not hold a usable secret; delete it or set API_KEY_HASH_SECRET"
        )
    return KeySecret(value.encode(), "file")
