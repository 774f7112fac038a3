"""API bearer tokens: created once, stored only as a hash, with scopes and an optional expiry.

The store is one JSON file, ``$CHAINCAST_HOME/tokens.json`` (mode 0600), chosen over Redis
so that ``chaincast token create`` works before any stack runs and a token survives a Redis
flush; in Kubernetes the file is mounted from a Secret (it holds no usable token, only
SHA-256 hashes). The API re-reads the file when it changes, so ``token revoke`` takes effect
on the next request without a restart.

A token is ``cc_`` + 32 random bytes (urlsafe base64): far too much entropy to guess, so an
unsalted SHA-256 is enough to make the stored hash useless to a reader of the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chaincast.stream.files import write_atomic

PREFIX = "cc_"
SCOPES = ("read",)  # every /v1 endpoint needs "read"; more scopes when write endpoints exist


def digest(token: str) -> str:
    """The stored form of a token.

    >>> digest("cc_x")[:12]
    '9da25277c7c2'
    """
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    id: str  # short public handle for list/revoke (the first characters of the hash)
    name: str
    sha256: str
    scopes: list[str] = field(default_factory=lambda: ["read"])
    created_at: float = 0.0  # epoch seconds
    expires_at: float | None = None  # epoch seconds; None = no expiry

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now if now is not None else time.time()) >= self.expires_at


class TokenError(ValueError):
    """A bad name, scope or id given to the store (the CLI shows it as one line)."""


class TokenStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: dict[str, TokenInfo] = {}
        self._stamp: tuple[int, int] | None = None

    @classmethod
    def in_home(cls, home: Path) -> TokenStore:
        return cls(home / "tokens.json")

    # -- reading (the API) --

    def tokens(self) -> dict[str, TokenInfo]:
        """Hash -> token, re-read only when the file changed."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._cache, self._stamp = {}, None
            return self._cache
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._cache = {t.sha256: t for t in self._read()}
            self._stamp = stamp
        return self._cache

    def verify(self, token: str) -> TokenInfo | None:
        """The token's entry if it is known and not expired, else None."""
        if not token.startswith(PREFIX):
            return None
        info = self.tokens().get(digest(token))
        if info is None or info.expired():
            return None
        return info

    # -- writing (the CLI) --

    def create(self, name: str, scopes: list[str], ttl_s: float | None = None) -> tuple[str, TokenInfo]:
        """A new token (returned once, never stored) and its stored entry."""
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise TokenError(f"token name must be 1-64 letters, digits, '-', '_' or '.', not {name!r}")
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown or not scopes:
            raise TokenError(f"scopes must be among {', '.join(SCOPES)}, not {', '.join(unknown) or 'none'}")
        if ttl_s is not None and ttl_s <= 0:
            raise TokenError("the expiry must be in the future")
        token = PREFIX + secrets.token_urlsafe(32)
        sha = digest(token)
        now = time.time()
        info = TokenInfo(id=sha[:12], name=name, sha256=sha, scopes=sorted(set(scopes)), created_at=now,
                         expires_at=None if ttl_s is None else now + ttl_s)
        with self._locked() as entries:
            entries.append(info)
        return token, info

    def list(self) -> list[TokenInfo]:
        return sorted(self._read(), key=lambda t: t.created_at)

    def revoke(self, name_or_id: str) -> list[TokenInfo]:
        """Remove every token with this name or id; the removed ones (none: TokenError)."""
        with self._locked() as entries:
            gone = [t for t in entries if name_or_id in (t.name, t.id)]
            if not gone:
                raise TokenError(f"no token named or with id {name_or_id!r}")
            entries[:] = [t for t in entries if t not in gone]
        return gone

    def _read(self) -> list[TokenInfo]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        return [TokenInfo(**t) for t in raw.get("tokens", [])]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[TokenInfo]]:
        """Read-modify-write under an exclusive lock; the file is replaced atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._read()
            yield entries
            write_atomic(self.path, json.dumps({"tokens": [asdict(t) for t in entries]}, indent=1), mode=0o600)
