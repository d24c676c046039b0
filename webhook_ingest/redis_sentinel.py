"""Redis Sentinel: one URL form for every process and every client that reaches Redis.

    redis+sentinel://[[user]:password@]host:port[,host:port...]/master-name[/db][?options]
    rediss+sentinel://...   the same over TLS (sentinels and data nodes)

The hosts are the sentinels (26379 when a port is left out); `master-name` is
the name the sentinels monitor (`sentinel monitor <name> ...`); the password
(and user) are the data nodes'. Options: `sentinel_password` and
`sentinel_username` when the sentinels require their own (`requirepass` in
sentinel.conf), and the `ssl_*` options redis-py takes in a rediss:// URL.

Everything that reaches Redis takes the master's address from the sentinels
when it connects, and again after a connection to it fails: the state client
(redis_client), the Celery broker (kombu's Sentinel transport:
celeryconfig.kombu_sentinel_broker), RedBeat's lock (beat uses the state
client, workers.beat_scheduler), the rate limit (inside the hand-off's script),
Flower (the Celery app's broker). No process has to be restarted after a
failover. docs/operations.md, "Redis Sentinel", for operators.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
# What redis-py accepts in a rediss:// URL's query for the certificate checks.
SSL_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
_SENTINEL_AUTH = ("sentinel_password", "sentinel_username")
_CERT_REQS = {"none", "optional", "required"}


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SCHEMES


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls: bool = False
    # the ssl_* options as redis-py's connections take them
    ssl: dict[str, object] = field(default_factory=dict)

    @property
    def server(self) -> tuple:
        """Which Redis this names, to compare two URLs: the same master name behind
        the same sentinels is the same server whatever the order of the hosts."""
        return ("sentinel", frozenset(self.sentinels), self.master_name, self.username)

    def data_node_kwargs(self) -> dict[str, object]:
        """Connection keywords for the master's connections (redis-py)."""
        return {"db": self.db, **self._connection_kwargs(self.username, self.password)}

    def sentinel_kwargs(self) -> dict[str, object]:
        """Connection keywords for the sentinels' own connections (redis-py)."""
        return self._connection_kwargs(self.sentinel_username, self.sentinel_password)

    def _connection_kwargs(self, username: str | None, password: str | None) -> dict[str, object]:
        kwargs: dict[str, object] = {}
        if username:
            kwargs["username"] = username
        if password:
            kwargs["password"] = password
        if self.tls:
            kwargs["ssl"] = True
            kwargs.update(self.ssl)
        return kwargs

    def hosts_text(self) -> str:
        return ",".join(f"{_host_text(host)}:{port}" for host, port in self.sentinels)


def parse(url: str) -> SentinelUrl:
    """The URL's parts; ValueError saying what is wrong (config.py shows it with the
    variable's name)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ValueError("a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://")
    # urlsplit would take "h1:26379,h2:26379" for one host with a bad port: split the
    # authority by hand, then read each host:port alone.
    authority, slash, path_and_query = rest.partition("/")
    path, _, query = path_and_query.partition("?")
    userinfo, at, hostlist = authority.rpartition("@")
    if not hostlist:
        raise ValueError("names no sentinel: redis+sentinel://host:26379[,host:port...]/master")
    sentinels = tuple(_host_port(item) for item in hostlist.split(","))
    segments = [unquote(s) for s in path.split("/") if s] if slash else []
    if not segments:
        raise ValueError("names no master: add /<master-name> after the sentinels' hosts")
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise ValueError("path must be /<master-name> or /<master-name>/<db>")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(SSL_OPTIONS) - set(_SENTINEL_AUTH))
    if unknown:
        known = ", ".join((*_SENTINEL_AUTH, *SSL_OPTIONS))
        raise ValueError(f"unknown option {unknown[0]!r} (known: {known})")
    tls = scheme.lower() == "rediss+sentinel"
    ssl = {name: options[name] for name in SSL_OPTIONS if name in options}
    if ssl and not tls:
        raise ValueError("ssl_* options need rediss+sentinel:// (TLS)")
    if "ssl_cert_reqs" in ssl and str(ssl["ssl_cert_reqs"]).lower() not in _CERT_REQS:
        raise ValueError("ssl_cert_reqs must be none, optional or required")
    if "ssl_check_hostname" in ssl:
        ssl["ssl_check_hostname"] = str(ssl["ssl_check_hostname"]).lower() in ("1", "true", "yes")
    return SentinelUrl(
        sentinels=sentinels,
        master_name=segments[0],
        db=int(segments[1]) if len(segments) == 2 else 0,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
        tls=tls,
        ssl=ssl,
    )


def _host_port(item: str) -> tuple[str, int]:
    parts = urlsplit(f"//{item}")
    try:
        port = parts.port or DEFAULT_SENTINEL_PORT
    except ValueError:
        raise ValueError(f"bad sentinel address {item!r}: expected host:port") from None
    if not parts.hostname:
        raise ValueError(f"bad sentinel address {item!r}: expected host:port")
    return parts.hostname, port


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host
