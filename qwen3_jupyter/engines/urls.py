"""Server addresses as users write them, and as messages may show them (never a credential).

Users paste `http://host:8000`, `http://host:8000/v1`, `.../v1/chat/completions`, a URL with
`user:key@` in it, or one with a query every request must carry (`?api-version=...`).
`api_base` turns each into the base URL an OpenAI client wants and `url_query` keeps the query
apart (the client appends paths to the base, so a query left in it would end up mid-path);
`mask_url` and `redact` make sure no message, log line or file ever shows a credential.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .base import EngineError

_ENDPOINT_SUFFIXES = ("/chat/completions", "/completions", "/models")
REDACTED = "***"
_HOST_AND_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):\d+(/.*)?")


def with_scheme(url: str) -> str:
    """`url` trimmed, and `http://` put before a bare `host:port[/path]`: servers print their
    address that way (`localhost:8000`) and users paste it; they serve plain HTTP unless told
    otherwise. Anything else is left as written, for `api_base` to judge."""
    url = url.strip()
    return f"http://{url}" if _HOST_AND_PORT.fullmatch(url) else url


def mask_url(url: str) -> str:
    """`url` with any user name or password replaced by '***' (for every message and log)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(
        (parts.scheme, f"{REDACTED}@{_host(parts)}", parts.path, parts.query, parts.fragment)
    )


def shown_address(url: str) -> str:
    """`url` as a message may show it: no user name or password, and no query (a key can be
    passed there, `?api_key=…`)."""
    return mask_url(url.strip().split("?")[0])


def _host(parts: object) -> str:
    hostname = getattr(parts, "hostname", None) or ""
    if ":" in hostname:  # an IPv6 literal needs its brackets back
        hostname = f"[{hostname}]"
    port = getattr(parts, "port", None)
    return f"{hostname}:{port}" if port is not None else hostname


def api_base(url: str, named: str | None = None) -> str:
    """The OpenAI base URL for what the user wrote: no credentials, no query (see `url_query`),
    no trailing slash, `/v1` added when the path is empty (vLLM, SGLang and `transformers
    serve` all answer under /v1), and a pasted endpoint (`/v1/chat/completions`) cut back to
    its base.

    A URL that is not http(s)://host[:port][/path] raises a one-line EngineError naming the
    setting as `named` says (default: `--server '<url>'`).
    """
    named = named or f"--server {mask_url(url)!r}"
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise EngineError(f"{named} is not a URL: write e.g. http://localhost:8000/v1") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EngineError(f"{named} is not an http(s) URL: write e.g. http://localhost:8000/v1")
    path = parts.path.rstrip("/")
    for suffix in _ENDPOINT_SUFFIXES:
        if path.endswith(suffix):
            path = path[: -len(suffix)].rstrip("/")
            break
    if not path:
        path = "/v1"
    return urlunsplit((parts.scheme, _host(parts), path, "", ""))


def server_key(url: str) -> str:
    """One name per server as requests reach it: `http://h:8000`, `http://h:8000/v1/` and a
    pasted `…/v1/chat/completions` are one server (one client and pool, one gauge row, each
    notice once); a query or a key written in the URL makes another. The key is a digest."""
    query = urlencode(sorted(url_query(url).items()))
    password = url_password(url)
    key = hashlib.sha256(password.encode()).hexdigest()[:16] if password else ""
    return f"{api_base(url)}?{query}#{key}"


def url_query(url: str) -> dict[str, str]:
    """The query written in the URL (`?api-version=2024-10-21`), to send with every request."""
    try:
        query = urlsplit(url.strip()).query
    except ValueError:
        return {}
    return dict(parse_qsl(query, keep_blank_values=True))


def server_root(base: str) -> str:
    """Where the server's own endpoints (`/metrics`, `/health`) live: the base without `/v1`."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def url_password(url: str, decoded: bool = True) -> str | None:
    """The password (or lone user name) written in the URL, if any: `http://:KEY@host` and
    `http://KEY@host` carry an API key the way some notebooks share endpoints. Percent-escapes
    are decoded (`sk%2Fab` is the key `sk/ab`): a URL must escape `/`, `@` and `:` in a key."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    written = parts.password or parts.username
    if not written:
        return None
    return unquote(written) if decoded else written


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every secret (an API key, a URL password) replaced by '***'.

    For text that comes from outside (a server's error message may echo the key it rejected)
    before it reaches a message, a Result or a file. Secrets shorter than 4 characters are
    left alone: replacing every 'a' would make messages unreadable and protect nothing.
    """
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text
