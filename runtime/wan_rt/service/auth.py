"""API keys: `Authorization: Bearer KEY`; each key's jobs are visible to that key only."""
from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from wan_rt.errors import WanError


def load_keys(keys: tuple[str, ...] | list[str], key_file: Path | None) -> list[str]:
    """The keys given on the command line and in `key_file` (one per line; blank lines and # comments skipped)."""
    found = [key.strip() for key in keys if key.strip()]
    if key_file is not None:
        try:
            lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise WanError(f"cannot read the API key file {key_file}: {getattr(exc, 'strerror', None) or exc}") from None
        found += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not found:
            raise WanError(f"API key file {key_file} holds no keys (one per line)")
    return found


def owner_of(key: str) -> str:
    """What the queue stores for a key's jobs: a hash, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


class KeyCheck:
    def __init__(self, keys: list[str]):
        self.keys = list(keys)

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def owner(self, authorization: str | None) -> str | None:
        """The owner for an Authorization header; "" when no keys are configured; None when refused."""
        if not self.keys:
            return ""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        key = key.strip()
        # every key compared in constant time: the answer's timing says nothing about which key is close
        matches = [hmac.compare_digest(key.encode(), known.encode()) for known in self.keys]
        return owner_of(key) if any(matches) else None
