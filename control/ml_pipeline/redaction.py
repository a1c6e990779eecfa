"""`redact(text)`: the one function that removes credentials from anything the pipeline prints or logs.

It works on free text (an error message, a log line, a repr) as well as on a single DSN or URL, whatever the
scheme (postgresql://, POSTGRESQL://, postgresql+asyncpg://, mysql://, a mistyped postgresq://, https://...)
and whether or not the string parses: the password of every `scheme://user:password@host` is dropped (the
user name stays, so a person still sees which account was used) and so is every password parameter
(`?password=...`, `&sslpassword=...`, a libpq keyword `password=...`).
"""

from __future__ import annotations

import re

#: `scheme://` followed by the rest of the token (up to white space, a quote or a bracket).
_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s'\"<>()\[\]{}`,]*)")
#: A password-like parameter and its value, in a query string or a keyword=value DSN.
_PARAM_NAME = r"[A-Za-z_]*(?:password|passwd|pwd)"
_QUERY_PARAM = re.compile(rf"(?i)(?P<sep>[?&;])(?P<name>{_PARAM_NAME})=[^&#;]*")
_KEYWORD_PARAM = re.compile(rf"(?i)(?P<name>\b{_PARAM_NAME})\s*=\s*(?:'(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^\s&;,'\"]*)")
HIDDEN = "***"


def _redact_url(match: re.Match[str]) -> str:
    scheme, rest = match.group("scheme"), match.group("rest")
    if "@" in rest:  # user-info: everything up to the last '@' of the token, even when it holds '/', '?' or '#'
        userinfo, _, host = rest.rpartition("@")
        user = userinfo.split(":", 1)[0]
        rest = f"{user}@{host}" if user else host
    head, mark, query = rest.partition("?")
    if mark:
        query, hash_mark, fragment = query.partition("#")
        kept = [p for p in re.split(r"[&;]", query) if not re.fullmatch(rf"(?i){_PARAM_NAME}(=.*)?", p)]
        rest = head + ("?" + "&".join(kept) if kept else "") + hash_mark + fragment
    return scheme + rest


def redact(text: object) -> str:
    """`text` (any object, as str) with every password removed: URL user-info passwords and password parameters."""
    shown = _URL.sub(_redact_url, str(text))
    shown = _QUERY_PARAM.sub(lambda m: f"{m.group('sep')}{m.group('name')}={HIDDEN}", shown)
    return _KEYWORD_PARAM.sub(lambda m: f"{m.group('name')}={HIDDEN}", shown)
