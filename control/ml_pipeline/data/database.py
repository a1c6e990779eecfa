"""The one way the pipeline reaches PostgreSQL/YugabyteDB: which addresses are DSNs, which password applies,
connecting with a timeout, and every failure as one line with the DSN shown without its password.

Used by the training-data sources, the prediction-log sink and the A/B report. The password rule: a DSN
that carries its own password (`postgresql://user:PASSWORD@host/db` or `?password=...`) uses it; otherwise
the configured YUGABYTE_PASSWORD (a config.Secret) is passed to the driver, never written into a DSN string.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qsl, urlsplit

import asyncpg

from ml_pipeline.errors import JobFailed, UsageError
from ml_pipeline.redaction import redact

if TYPE_CHECKING:
    from ml_pipeline.config import Secret

SCHEMES = ("postgresql", "postgres")
SUPPORTED = "a postgresql:// (or postgres://) DSN"
CONNECT_TIMEOUT_S = 10.0
_SCHEME = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.\-]*)://")


class _Revealable(Protocol):
    def reveal(self) -> str | None: ...


def url_scheme(source: str) -> str | None:
    """The lower-cased scheme when `source` looks like `scheme://...` (any scheme), else None."""
    found = _SCHEME.match(source)
    return found.group(1).lower() if found else None


def is_dsn(source: str) -> bool:
    """True when `source` names a PostgreSQL database (postgresql:// or postgres://, any letter case)."""
    return url_scheme(source) in SCHEMES


def check_scheme(source: str, what: str, alternatives: str = "a .csv or .parquet file") -> None:
    """UsageError when `source` is a URL of a scheme other than postgresql:// (mysql://, postgresq://, ...)."""
    scheme = url_scheme(source)
    if scheme is not None and scheme not in SCHEMES:
        raise UsageError(
            f"{what} {redact(source)}: unsupported scheme {scheme}://; "
            f"supported: {SUPPORTED}{f' or {alternatives}' if alternatives else ''}"
        )


def dsn_problem(dsn: str) -> str | None:
    """Why `dsn` is not a usable PostgreSQL DSN (scheme, port, brackets), or None when it is."""
    scheme = url_scheme(dsn)
    if scheme not in SCHEMES:
        return f"unsupported scheme {scheme}://; supported: {SUPPORTED}" if scheme else f"not {SUPPORTED}"
    try:
        hosts = urlsplit(redact(dsn.strip())).netloc.rpartition("@")[2]
    except ValueError as exc:
        return redact(exc)
    for host in hosts.split(","):  # libpq allows host1:port1,host2:port2
        port = _port_of(host)
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            return "the port is not a number from 1 to 65535"  # not shown: a broken DSN may hold password bits
    return None


def _port_of(host: str) -> str:
    if host.startswith("["):  # [IPv6]:port
        rest = host.partition("]")[2]
        return rest[1:] if rest.startswith(":") else ""
    return host.rpartition(":")[2] if ":" in host else ""


def check_dsn(dsn: str, what: str) -> None:
    """UsageError naming `what` (an option or variable) when `dsn` is not a usable PostgreSQL DSN."""
    problem = dsn_problem(dsn)
    if problem is not None:
        raise UsageError(f"{what}={redact(dsn)} is not valid: {problem}")


def has_own_password(dsn: str) -> bool:
    """True when the DSN carries a password (user-info or a `password` query parameter)."""
    try:
        parts = urlsplit(dsn)
        in_userinfo = parts.password is not None
    except ValueError:
        return False
    return in_userinfo or any(key.lower() == "password" for key, _ in parse_qsl(parts.query))


def password_for(dsn: str, password: Secret | _Revealable | str | None) -> str | None:
    """The password to hand the driver: None when the DSN has its own, else `password` (a Secret or text)."""
    if has_own_password(dsn) or password is None:
        return None
    return password if isinstance(password, str) else password.reveal()


async def connect(
    dsn: str,
    password: Secret | _Revealable | str | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
    what: str = "the database",
) -> asyncpg.Connection:
    """Connect within `timeout` seconds; UsageError for a bad DSN, JobFailed when the server cannot be reached.

    `password` (YUGABYTE_PASSWORD, as a Secret or text) is used only when the DSN carries none (password_for)."""
    check_scheme(dsn, f"{what}:", alternatives="")
    shown = redact(dsn)
    try:
        return await asyncpg.connect(dsn, password=password_for(dsn, password), timeout=timeout)
    except ValueError as exc:  # asyncpg's ClientConfigurationError is a ValueError too
        raise UsageError(f"invalid DSN for {what} {shown}: {redact(exc)}") from None
    except TimeoutError:
        raise JobFailed(f"cannot connect to {what} {shown}: no answer within {timeout:g} s") from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise JobFailed(f"cannot connect to {what} {shown}: {redact(exc)}") from None
