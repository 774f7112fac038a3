"""Which model updates a worker trusts: signed by the registry's announcer, and inside the registry.

Anyone who can write to Kafka can put a ``ModelUpdate`` on ``models.updates``.
A worker therefore serves an update only when
- it carries a valid HMAC-SHA256 of its fields under ``CHAINCAST_MODEL_SIGNING_KEY``
  (checked whenever the key is set; the announcer signs with the same key), so
  neither a forged update nor a replayed old one with altered fields is taken;
- its ``uri`` resolves (symlinks followed) inside the registry directory;
- the file there is a regular file no larger than ``CHAINCAST_MODEL_MAX_BYTES``,
  checked before a byte is read (``file:///dev/zero`` is refused by its type).
The sha256 of the file against its card and the update is checked by
``models.serving.Forecaster.load`` as before.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
from pathlib import Path
from urllib.parse import unquote, urlparse

from chaincast.models.serving import ModelRejected
from chaincast.stream.records import ModelUpdate


def uri_path(uri: str) -> Path:
    """The local path of a ``file://`` URI (percent-escapes decoded, as ``Path.as_uri`` writes them).

    >>> str(uri_path("file:///tmp/my%20models/abc.onnx")), str(uri_path("/plain/path.onnx"))
    ('/tmp/my models/abc.onnx', '/plain/path.onnx')
    """
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(uri)


def _canonical(update: ModelUpdate) -> bytes:
    fields = update.model_dump(mode="json", by_alias=True, exclude={"signature"})
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def signature(update: ModelUpdate, key: str) -> str:
    return hmac.new(key.encode(), _canonical(update), hashlib.sha256).hexdigest()


def signed(update: ModelUpdate, key: str | None) -> ModelUpdate:
    """``update`` with its signature (unchanged without a key).

    >>> u = ModelUpdate(name="m", version="v1", uri="file:///r/v1.onnx", sha256="00")
    >>> s = signed(u, "k")
    >>> verify(s, "k"), verify(s.model_copy(update={"uri": "file:///dev/zero"}), "k"), verify(u, "k")
    (True, False, False)
    """
    return update if not key else update.model_copy(update={"signature": signature(update, key)})


def verify(update: ModelUpdate, key: str) -> bool:
    return bool(update.signature) and hmac.compare_digest(update.signature, signature(update, key))


def trusted_path(update: ModelUpdate, registry_dir: Path, key: str | None, max_bytes: int) -> Path:
    """The model file an update names, once it passed every check; ModelRejected otherwise."""
    if key and not update.signature:
        raise ModelRejected("untrusted: the update is not signed")
    if key and not verify(update, key):
        raise ModelRejected("untrusted: bad signature")
    path = uri_path(update.uri)
    resolved = path.resolve()
    if not resolved.is_relative_to(registry_dir.resolve()):
        raise ModelRejected(f"untrusted: {update.uri[:200]} is outside the registry")
    try:
        st = resolved.stat()
    except OSError as exc:
        raise ModelRejected(f"cannot read {path.name}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelRejected(f"untrusted: {path.name} is not a regular file")
    if st.st_size > max_bytes:
        raise ModelRejected(f"too large: {path.name} has {st.st_size} bytes > {max_bytes}")
    return resolved
