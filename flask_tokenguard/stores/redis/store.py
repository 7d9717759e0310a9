"""``redis://``, ``rediss://``, ``redis+unix://``: one store shared by many hosts.

``redis+sentinel://h1:26379,h2:26379/SERVICE[/DB]`` and ``redis+cluster://h1:7000,h2:7001``
(flask-limiter's spellings) reach a replicated Redis through redis-py's own ``Sentinel``
and ``RedisCluster``, which find the primary again after a failover.

Acknowledged writes: with the ``replicas`` option, every write that a token response or
a logoff depends on (starting, rotating and ending sessions, revoking) is followed by
``WAIT replicas replicas_timeout`` on the same connection (on a cluster, the connection
to the slot's master). Fewer acknowledgements raise ``StoreError``, after taking back
what a start or a rotation did (best effort), so that nothing the client was not told
about stays held. On a replicated URL every script is also resent for up to
``failover_timeout`` seconds when the connection breaks: the resend reaches the new
primary and, the scripts being resend-safe (below), either finds its first run there
or runs now, so the client's answer matches what the new primary holds.

Every primitive that must be atomic is one Lua script (this package's ``*.lua``, run by
EVALSHA with a fallback to loading it): a script runs with nothing interleaved, and it
costs one round trip. All keys of a store start with ``key_prefix``, whose hash tag
(``{...}``) puts them in one Cluster slot, so the scripts are Cluster-safe. The scripts
build most keys from the prefix (passed in ARGV) rather than receiving them in KEYS,
which Redis Cluster allows only for keys in the slot of the KEYS passed: a prefix
without a non-empty hash tag is therefore refused.

Retries: redis-py resends a command whose connection broke after it was sent, so a
script may run twice for one call. The scripts whose second run would answer
differently recognise their own first run: ``start_session`` and ``rotate_refresh`` by
the refresh hash only the caller knows, ``record_failure`` by an attempt id drawn per
call. A resent start that replaced sessions reports them again from a record kept a
minute (``REPLACED_KEPT_MS``), so the caller still stops honouring their tokens. (A
resent ``end_admin_session`` finds nothing left and answers None; a resent
``add_event`` stores the event twice: both harmless.)

Expiry: every decision compares with the ``now`` the caller passes, never with Redis's
clock. Redis TTLs are only a safety net that frees the keys of sessions nobody sweeps.
They are *relative* (PEXPIRE of ``expires_at - now`` plus a margin of real time), not
PEXPIREAT at ``expires_at``: the caller's ``now`` need not be the wall clock (tests use
``now=1000``; app hosts may be skewed), and an absolute deadline in the past would delete
a live session at once. Lockout counters and admin console sessions get the same kind of
safety net (their window or lifetime plus the margin). Aggregate keys (seat and session
indexes, revocations, events) have no TTL and are swept explicitly by ``now`` (events
are trimmed by count).
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import math
import secrets
import time
import typing as t
from urllib.parse import unquote
from urllib.parse import urlsplit

from ...errors import ConfigurationError
from ...errors import ConflictError
from ...errors import StoreError
from ...models import AdminSession
from ...models import Client
from ...models import SeatOutcome
from ...models import SigningKey
from ...models import TokenSession
from ...models import User
from .. import records
from ..base import epoch_text
from ..base import EVENTS_KEPT
from ..base import new_epoch
from ..base import REVOKE_MARGIN
from ..base import schemes_of
from ..base import Store

if t.TYPE_CHECKING:  # pragma: no cover
    import redis as redis_py
    from redis.commands.core import Script

logger = logging.getLogger("flask_tokenguard.stores.redis")

#: Default prefix: one hash tag for every key, so that scripts touch a single Cluster slot.
DEFAULT_KEY_PREFIX = "tg:{tg}:"
#: Real seconds a session's keys outlive its remaining lifetime: absorbs clock skew between
#: app hosts; after it an abandoned session's keys vanish even if nothing sweeps them.
TTL_MARGIN = 3600.0
#: Cap on a safety-net TTL (ten years), so that a far-future ``expires_at`` cannot overflow.
TTL_MAX_MS = 10 * 365 * 86400 * 1000
#: Most expired sessions or revocations one script sweeps; reads filter by ``now`` anyway,
#: so a bounded sweep keeps each script short without changing any result.
SWEEP_LIMIT = 256

#: Real milliseconds a start's list of replaced sessions is kept for a resend to report.
REPLACED_KEPT_MS = 60_000

#: URL schemes of replicated topologies, whose client finds a new primary by itself.
REPLICATED_SCHEMES = ("redis+sentinel", "redis+cluster")
#: Default ``replicas_timeout``: milliseconds WAIT gives the replicas to acknowledge.
REPLICAS_TIMEOUT_MS = 1000
#: Default ``failover_timeout`` on a replicated URL: seconds a write whose connection broke
#: is resent, enough for Sentinel or Cluster to promote a replica (0 elsewhere).
FAILOVER_TIMEOUT = 10.0
#: Default ports of a Sentinel and of a Cluster node, when the URL names none.
SENTINEL_PORT = 26379
CLUSTER_PORT = 6379

#: Scripts, each in ``<name>.lua`` of this package with ``lib.lua`` prepended.
_SCRIPTS = (
    "start_session",
    "rotate_refresh",
    "find_refresh",
    "end_session",
    "end_sessions",
    "revoke",
    "revocations_since",
    "revocation_epoch",
    "create_client",
    "update_client",
    "delete_client",
    "get_client",
    "update_user",
    "signing_keys",
    "record_failure",
    "release_failure",
    "touch_admin_session",
    "end_admin_session",
    "unrotate_refresh",
)

#: Characters that SCAN's MATCH treats as glob syntax.
_GLOB_SPECIAL = "\\*?[]^"


def _num(value: float) -> str:
    """A float as the shortest string that parses back to the same float (Lua compares it)."""
    return repr(float(value))


def _ttl_ms(expires_at: float, now: float) -> str:
    """Safety-net TTL in milliseconds: the session's remaining lifetime plus a margin."""
    remaining = max(expires_at - now, 0.0) + TTL_MARGIN
    return str(min(math.ceil(remaining * 1000), TTL_MAX_MS))


def _read_script(name: str) -> str:
    """Load ``<name>.lua`` from this package, with the shared helpers in front."""
    files = importlib.resources.files(__package__ or "flask_tokenguard.stores.redis")
    lib = files.joinpath("lib.lua").read_text(encoding="utf-8")
    body = files.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return f"{lib}\n{body}"


def _check_hash_tag(prefix: str) -> None:
    """Refuse a prefix without a non-empty hash tag, as Redis Cluster computes it.

    Cluster hashes only the part between the first ``{`` and the first ``}`` after it,
    if that part is non-empty; both must lie in the prefix, or each key's own suffix
    would choose its slot.
    """
    start = prefix.find("{")
    end = prefix.find("}", start + 1) if start >= 0 else -1
    if end <= start + 1:
        raise ConfigurationError(
            f"key_prefix {prefix!r} has no Redis Cluster hash tag: it needs a non-empty "
            "'{...}' such as 'myapp:{tg}:'. The store's scripts build keys from the "
            "prefix, which is safe only while every key of the store hashes to one "
            "Cluster slot, and only a hash tag puts them there."
        )


class _Endpoints(t.NamedTuple):
    """What a ``redis+sentinel://`` or ``redis+cluster://`` URL names."""

    hosts: list[tuple[str, int]]
    path: list[str]
    credentials: dict[str, str]


def _endpoints(url: str, default_port: int) -> _Endpoints:
    """Split a multi-host URL: ``scheme://[user:password@]h1:p1,h2:p2[/path]``.

    urlsplit cannot read several hosts, so each one is read on its own; options belong in
    ``TOKENGUARD_STORE_OPTIONS``, hence no query string.
    """
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    path, _, query = path.partition("?")
    if query:
        raise ConfigurationError(
            f"a {scheme}:// URL takes no query string; put options in TOKENGUARD_STORE_OPTIONS"
        )
    userinfo, _, hostlist = netloc.rpartition("@")
    credentials: dict[str, str] = {}
    if userinfo:
        username, has_password, password = userinfo.partition(":")
        if username:
            credentials["username"] = unquote(username)
        if has_password:
            credentials["password"] = unquote(password)
    hosts = []
    for item in hostlist.split(","):
        try:
            parts = urlsplit(f"//{item.strip()}")
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise ConfigurationError(f"bad host in the {scheme}:// URL: {exc}") from None
        if not host:
            raise ConfigurationError(f"a {scheme}:// URL needs host:port[,host:port...]")
        hosts.append((host, port or default_port))
    return _Endpoints(hosts, [p for p in path.split("/") if p] if slash else [], credentials)


def _option_int(value: t.Any, name: str, least: int) -> int:
    """An integer store option, at least ``least``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigurationError(f"{name} must be an integer >= {least}")
    return value


def _sentinel_client(redis: t.Any, url: str, options: dict[str, t.Any]) -> t.Any:
    """The primary of ``redis+sentinel://h1:26379,h2:26379/SERVICE[/DB]``.

    redis-py's ``master_for`` asks the Sentinels for the primary on every new connection,
    and drops a connection to a primary that became a replica, so a failover needs no
    restart. The Sentinels themselves get the socket timeouts (``sentinel_kwargs``
    overrides them, e.g. for a Sentinel password).
    """
    import redis.sentinel

    endpoints = _endpoints(url, SENTINEL_PORT)
    if not 1 <= len(endpoints.path) <= 2:
        raise ConfigurationError(
            "a redis+sentinel:// URL names the service: redis+sentinel://h1:26379/SERVICE[/DB]"
        )
    service, *db = endpoints.path
    try:
        database = int(db[0]) if db else 0
    except ValueError:
        raise ConfigurationError("the database of a redis+sentinel:// URL is a number") from None
    sentinel_kwargs = options.pop("sentinel_kwargs", None)
    if sentinel_kwargs is None:
        sentinel_kwargs = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel = redis.sentinel.Sentinel(endpoints.hosts, sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(unquote(service), db=database, **endpoints.credentials, **options)


def _cluster_client(redis: t.Any, url: str, options: dict[str, t.Any]) -> t.Any:
    """A ``RedisCluster`` for ``redis+cluster://h1:7000,h2:7001`` (any nodes; it finds the rest).

    RedisCluster refreshes its slot map when a node fails or answers MOVED. Its own retry
    (``retry``) replaces the per-connection one, which it does not accept.
    """
    import redis.cluster

    endpoints = _endpoints(url, CLUSTER_PORT)
    if endpoints.path not in ([], ["0"]):
        raise ConfigurationError("Redis Cluster has database 0 only: redis+cluster://h1:7000,...")
    nodes = [redis.cluster.ClusterNode(host, port) for host, port in endpoints.hosts]
    return redis.cluster.RedisCluster(startup_nodes=nodes, **endpoints.credentials, **options)


def _session_from(fields: t.Mapping[str, str], session_id: str) -> TokenSession:
    return records.session_from({**fields, "session_id": session_id})


def _admin_session_from(fields: t.Mapping[str, str], session_hash: str) -> AdminSession:
    return AdminSession(
        session_hash=session_hash,
        username=fields["username"],
        created_at=float(fields["created_at"]),
        expires_at=float(fields["expires_at"]),
    )


def _pairs(flat: t.Sequence[str]) -> dict[str, str]:
    """A flat HGETALL reply from a script as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _to_json(record: t.Mapping[str, t.Any]) -> str:
    return json.dumps(record, separators=(",", ":"))


def _client_to_json(client: Client) -> str:
    return _to_json(records.client_record(client))


def _client_from_json(data: str) -> Client:
    return records.client_from(json.loads(data))


def _user_to_json(user: User) -> str:
    return _to_json(records.user_record(user))


def _user_from_json(data: str) -> User:
    return records.user_from(json.loads(data))


def _key_to_json(key: SigningKey) -> str:
    """The key without ``retire_at``, which lives in its own hash so Lua can set it."""
    fields = records.key_record(key)
    del fields["retire_at"]
    return _to_json(fields)


def _keys_from_reply(flat: t.Sequence[str | None]) -> list[SigningKey]:
    keys = []
    for i in range(0, len(flat), 3):
        data, retire_at = flat[i + 1], flat[i + 2]
        if data is None:  # pragma: no cover - the scripts keep order and keys in step
            continue
        keys.append(records.key_from({**json.loads(data), "retire_at": retire_at}))
    # Oldest first; sorted() is stable, so equal times keep insertion order.
    return sorted(keys, key=lambda k: k.created_at)


def _epoch_candidate() -> str:
    """A fresh epoch that a script stores if the revocation counter has none."""
    return epoch_text(new_epoch())


class RedisStore(Store):
    """Records as hashes and JSON strings; seats, sessions and revocations as sorted sets."""

    schemes = schemes_of("redis")

    def __init__(self, url: str, **options: t.Any) -> None:
        try:
            import redis
            import redis.backoff
            import redis.retry
        except ImportError as exc:
            raise ConfigurationError(
                "RedisStore needs redis-py: install flask-tokenguard[redis]"
            ) from exc
        self._redis = redis
        prefix = options.pop("key_prefix", DEFAULT_KEY_PREFIX)
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError("key_prefix must be a non-empty string")
        _check_hash_tag(prefix)
        self.key_prefix: str = prefix
        scheme = url.partition("://")[0].lower()
        self._cluster = scheme == "redis+cluster"
        #: Replicas that must acknowledge each write a response depends on (0: none asked).
        self.replicas: int = _option_int(options.pop("replicas", None) or 0, "replicas", 0)
        #: Milliseconds WAIT gives them; WAIT 0 would block for ever, hence at least 1.
        self.replicas_timeout: int = _option_int(
            options.pop("replicas_timeout", REPLICAS_TIMEOUT_MS), "replicas_timeout", 1
        )
        failover = options.pop(
            "failover_timeout", FAILOVER_TIMEOUT if scheme in REPLICATED_SCHEMES else 0.0
        )
        if isinstance(failover, bool) or not isinstance(failover, (int, float)) or failover < 0:
            raise ConfigurationError("failover_timeout must be a number of seconds >= 0")
        #: Seconds a broken write is resent to find a new primary (see the module docstring).
        self.failover_timeout: float = float(failover)
        exceptions = redis.exceptions
        #: Failures after which a command is resent (``failover_timeout``): the connection
        #: broke or the node no longer serves the slot. Not a timeout (see below).
        self._broken: tuple[type[BaseException], ...] = (
            exceptions.ConnectionError,  # MasterNotFoundError, a primary turned replica
            exceptions.ClusterDownError,
            exceptions.TryAgainError,
            exceptions.AskError,  # and MovedError: the slot has a new master
            exceptions.ReadOnlyError,
            exceptions.RedisClusterException,
        )
        #: The primary's connected replicas and when that was read (``_wait_for``).
        self._connected_replicas: tuple[int, float] = (0, -math.inf)
        # A store that hangs is worse than one that fails: bounded waits, then StoreError.
        options.setdefault("socket_connect_timeout", 5.0)
        options.setdefault("socket_timeout", 5.0)
        # PING a connection idle this long before reusing it, to notice a restarted server.
        options.setdefault("health_check_interval", 30)
        timeout = options["socket_timeout"]
        if self.replicas and timeout is not None and self.replicas_timeout >= timeout * 1000:
            # The WAIT's reply would come after the socket gave up on it.
            raise ConfigurationError("replicas_timeout (ms) must be shorter than socket_timeout")
        if "retry" not in options:
            # Retry only connection failures (a stale pooled socket after a Redis restart),
            # a few times and briefly. Not timeouts, unlike redis-py's default (10 retries
            # on both): a hung server would block a request for a minute, and a timed-out
            # script may have run, so running it again could fail a refresh that succeeded.
            options["retry"] = redis.retry.Retry(
                redis.backoff.EqualJitterBackoff(cap=0.25, base=0.01),
                3,
                supported_errors=(redis.exceptions.ConnectionError,),
            )
        # Replies are parsed as str throughout.
        options["decode_responses"] = True
        _, sep, rest = url.partition("://")
        if scheme == "redis+unix":
            # redis-py spells the socket scheme ``unix://`` (urlunsplit would drop the //).
            url = f"unix{sep}{rest}"
        try:
            if scheme == "redis+sentinel":
                client = _sentinel_client(redis, url, options)
            elif self._cluster:
                client = _cluster_client(redis, url, options)
            else:
                client = redis.Redis.from_url(url, **options)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"bad Redis store URL or options: {exc}") from exc
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            # RedisCluster reads the slot map at once: no node answered.
            raise StoreError(f"RedisStore failed: {type(exc).__name__}", exc) from exc
        # A RedisCluster answers the commands this store sends as a Redis does.
        self._client: redis_py.Redis = client
        # register_script sends nothing yet; each call is EVALSHA, and on NOSCRIPT (a new or
        # restarted server) redis-py loads the script and retries once.
        self._scripts: dict[str, Script] = {
            name: self._client.register_script(_read_script(name)) for name in _SCRIPTS
        }

    @property
    def base_exceptions(self) -> tuple[type[BaseException], ...]:
        """Every redis-py failure (connection, timeout, response, and the Cluster client's
        own, which are not ``RedisError``: no node for a slot) plus raw socket errors."""
        exceptions = self._redis.exceptions
        return (
            exceptions.RedisError,
            exceptions.RedisClusterException,
            ConnectionError,
            TimeoutError,
        )

    def _key(self, *parts: str) -> str:
        return self.key_prefix + ":".join(parts)

    def _run(self, name: str, keys: t.Sequence[str], args: t.Sequence[str | int]) -> t.Any:
        """Run a script; the prefix is always ARGV[1] where the script builds keys from it.

        Resent while the connection breaks, for up to ``failover_timeout``: a request
        that already rotated a refresh token and then reads the client record again
        must reach the new primary, or it would fail after the rotation and end a
        session that its client still holds.
        """
        deadline = time.monotonic() + self.failover_timeout
        while True:
            try:
                return self._scripts[name](keys=list(keys), args=list(args))
            except self._broken:
                if time.monotonic() >= deadline:
                    raise
                self._before_resend()

    def _write(
        self,
        name: str,
        keys: t.Sequence[str],
        args: t.Sequence[str | int],
        undo: t.Callable[[t.Any], None] | None = None,
    ) -> t.Any:
        """Run a write script that an answer depends on: resent across a failover, and
        acknowledged by ``replicas`` replicas when asked.

        Only connection failures are resent (a timeout is not: see ``__init__``): the
        server may have run the script, and a resend that finds its first run answers as
        it did. ``undo(reply)`` takes back a write that too few replicas acknowledged.
        """
        if not self.replicas:
            return self._run(name, keys, args)
        deadline = time.monotonic() + self.failover_timeout
        while True:
            try:
                reply, acks = self._acknowledged(name, keys, args)
                break
            except self._broken:
                if time.monotonic() >= deadline:
                    raise
                self._before_resend()
        if int(acks) < self.replicas:
            if undo is not None:
                try:
                    undo(reply)
                except self.base_exceptions as exc:  # best effort; it expires anyway
                    logger.warning("could not take back an unacknowledged write: %r", exc)
            raise StoreError(
                f"RedisStore: {acks} of {self.replicas} replicas acknowledged the write "
                f"within {self.replicas_timeout} ms"
            )
        return reply

    def _acknowledged(
        self, name: str, keys: t.Sequence[str], args: t.Sequence[str | int]
    ) -> tuple[t.Any, int]:
        """Run a script and WAIT on one connection; return its reply and the replicas' acks.

        WAIT counts the acknowledgements of this connection's own last write, so both go
        down one pipeline: to the primary (Sentinel, plain Redis), or to the master of the
        store's one slot (Cluster; a cluster pipeline could retry WAIT elsewhere).
        """
        client: t.Any = self._client
        if self._cluster:
            client = client.get_redis_connection(client.get_node_from_key(keys[0]))
        script = self._scripts[name]
        wait_for = self._wait_for(client)

        def send() -> tuple[t.Any, int]:
            # EVALSHA itself: a Script given a pipeline would ask SCRIPT EXISTS first, one
            # more round trip on every write.
            pipe = client.pipeline(transaction=False)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.wait(wait_for, self.replicas_timeout)
            reply, acks = pipe.execute()
            return reply, int(acks)

        try:
            return send()
        except self._redis.exceptions.NoScriptError:
            # A server that lacks the script (new, restarted or promoted) ran nothing.
            client.script_load(script.script)
            return send()

    def _wait_for(self, client: t.Any) -> int:
        """How many acknowledgements to wait for: every connected replica, at least
        ``replicas`` (the primary's count, read at most once a second).

        ``replicas`` is what must answer for the write to count; waiting for every replica
        that is up as well means that whichever one a failover promotes holds every write
        a client was answered for. Waiting for only N of more would let Sentinel promote
        one that missed the last writes (it picks by the offsets it last saw).
        """
        count, read_at = self._connected_replicas
        now = time.monotonic()
        if now - read_at >= 1.0:
            info = client.info("replication")
            count = int(info.get("connected_slaves", 0))
            self._connected_replicas = (count, now)
        return max(self.replicas, count)

    def _before_resend(self) -> None:
        """Pause before a resend; on a Cluster, re-read the slot map (redis-py's own)."""
        if self._cluster:
            client: t.Any = self._client
            try:
                client.nodes_manager.initialize()
            except self.base_exceptions:
                pass  # no node answers yet: the next attempt tries again
        time.sleep(0.1)

    # -- lifecycle ---------------------------------------------------------------------

    def check(self) -> None:
        """PING; log a warning when Redis may evict keys, since evicting seats frees them."""
        self._client.ping()
        try:
            reply = self._client.config_get("maxmemory-policy")
        except self._redis.exceptions.ResponseError:
            # CONFIG is renamed or forbidden (managed services, ACLs): cannot tell.
            return
        policy = reply.get("maxmemory-policy")
        if policy and policy != "noeviction":
            logger.warning(
                "Redis maxmemory-policy is %r: under memory pressure Redis may evict "
                "session and seat keys, freeing seats early; set it to 'noeviction'",
                policy,
            )

    def close(self) -> None:
        """Disconnect every pooled connection; the pool reconnects on the next call."""
        client: t.Any = self._client
        if self._cluster:
            client.disconnect_connection_pools()  # one pool per node
        else:
            client.connection_pool.disconnect()
            # redis+sentinel://: the Sentinels' own connections (redis-py's pool keeps them).
            sentinels = getattr(client.connection_pool, "sentinel_manager", None)
            for sentinel in getattr(sentinels, "sentinels", ()):
                sentinel.connection_pool.disconnect()

    def reset(self) -> None:
        """Delete every key under this store's prefix (and nothing else)."""
        pattern = "".join("\\" + c if c in _GLOB_SPECIAL else c for c in self.key_prefix) + "*"
        batch: list[str] = []
        for key in self._client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                self._client.delete(*batch)
                batch.clear()
        if batch:
            self._client.delete(*batch)

    def drop(self) -> None:
        """Delete this store's keys for good: tests' teardown of a per-run prefix."""
        self.reset()

    def claim_once(self, name: str) -> bool:
        # SET NX is atomic: exactly one caller creates the key.
        return bool(self._client.set(self._key("claim", name), "1", nx=True))

    # -- signing keys ------------------------------------------------------------------

    def _key_keys(self) -> list[str]:
        return [self._key("signing_order"), self._key("signing_keys"), self._key("signing_retire")]

    def ensure_signing_key(self, candidate: SigningKey) -> list[SigningKey]:
        retire_at = "" if candidate.retire_at is None else _num(candidate.retire_at)
        reply = self._run(
            "signing_keys",
            self._key_keys(),
            ["ensure", candidate.kid, _key_to_json(candidate), retire_at],
        )
        return _keys_from_reply(reply)

    def add_signing_key(self, key: SigningKey, retire_others_at: float) -> None:
        retire_at = "" if key.retire_at is None else _num(key.retire_at)
        self._run(
            "signing_keys",
            self._key_keys(),
            ["add", key.kid, _key_to_json(key), retire_at, _num(retire_others_at)],
        )

    def signing_keys(self, now: float) -> list[SigningKey]:
        reply = self._run("signing_keys", self._key_keys(), ["list", _num(now)])
        return _keys_from_reply(reply)

    # -- clients -----------------------------------------------------------------------

    def _client_keys(self) -> list[str]:
        return [self._key("clients"), self._key("client_aliases"), self._key("client_alias_of")]

    def create_client(self, client: Client) -> None:
        created = self._run(
            "create_client",
            self._client_keys(),
            [client.client_id, client.alias or "", _client_to_json(client)],
        )
        if not created:
            raise ConflictError("client id or alias is taken")

    def get_client(self, id_or_alias: str) -> Client | None:
        data = self._run("get_client", self._client_keys()[:2], [id_or_alias])
        return None if data is None else _client_from_json(data)

    def update_client(self, client: Client) -> bool:
        result = self._run(
            "update_client",
            self._client_keys(),
            [client.client_id, client.alias or "", _client_to_json(client)],
        )
        if result == -1:
            raise ConflictError("alias is taken")
        return bool(result == 1)

    def delete_client(self, client_id: str) -> bool:
        return bool(self._run("delete_client", self._client_keys(), [client_id]) == 1)

    def list_clients(self) -> list[Client]:
        values = t.cast("list[str]", self._client.hvals(self._key("clients")))
        clients = [_client_from_json(v) for v in values]
        return sorted(clients, key=lambda c: (c.created_at, c.client_id))

    # -- users -------------------------------------------------------------------------

    def create_user(self, user: User) -> None:
        # HSETNX is atomic: of two creators of one name, one gets 0.
        created = self._client.hsetnx(self._key("users"), user.username, _user_to_json(user))
        if not created:
            raise ConflictError("user exists")

    def get_user(self, username: str) -> User | None:
        data = t.cast("str | None", self._client.hget(self._key("users"), username))
        return None if data is None else _user_from_json(data)

    def update_user(self, user: User) -> bool:
        result = self._run(
            "update_user", [self._key("users")], [user.username, _user_to_json(user)]
        )
        return bool(result == 1)

    def delete_user(self, username: str) -> bool:
        return bool(self._client.hdel(self._key("users"), username))

    def list_users(self) -> list[User]:
        values = t.cast("list[str]", self._client.hvals(self._key("users")))
        return sorted((_user_from_json(v) for v in values), key=lambda u: u.username)

    # -- sessions and seats ------------------------------------------------------------

    def start_session(
        self,
        session: TokenSession,
        seat_limit: int | None,
        now: float,
        *,
        skew: float = 0.0,
        client_cap: int | None = None,
        replace_oldest: bool = False,
    ) -> SeatOutcome:
        sid = session.session_id
        keys = [
            self._key("seats"),
            self._key("sessions"),
            self._key("session", sid),
            self._key("refresh", session.refresh_hash),
            self._key("client_sessions", session.client_id),
            self._key("client_seats", session.client_id),
            self._key("replaced", sid),
        ]
        args = [
            self.key_prefix,
            _num(now),
            "" if seat_limit is None else str(int(seat_limit)),
            sid,
            "1" if session.holds_seat else "0",
            _num(session.expires_at),
            _ttl_ms(session.expires_at, now),
            session.client_id,
            session.subject,
            session.scope,
            session.refresh_hash,
            _num(session.created_at),
            str(SWEEP_LIMIT),
            # Seats are reclaimed only once expired on every host's clock (see ``Store``).
            _num(now - max(skew, 0.0)),
            "" if client_cap is None else str(int(client_cap)),
            "1" if replace_oldest else "0",
            _num(now + REVOKE_MARGIN),
            _epoch_candidate(),
            str(REPLACED_KEPT_MS),
        ]
        reply = self._write(
            "start_session", keys, args, lambda reply: self._unstart(reply, sid, now)
        )
        if reply[0] != 1:
            return SeatOutcome(False, "client" if reply[1] == "client" else "pool")
        replaced = tuple(
            _session_from(_pairs(reply[i + 1]), reply[i]) for i in range(1, len(reply), 2)
        )
        return SeatOutcome(True, None, replaced)

    def earliest_seat_expiry(self, now: float, client_id: str | None = None) -> float | None:
        seats = self._key("seats") if client_id is None else self._key("client_seats", client_id)
        first = self._client.zrangebyscore(
            seats, f"({_num(now)}", "+inf", start=0, num=1, withscores=True
        )
        return float(first[0][1]) if first else None

    def seats_in_use(self, now: float) -> int:
        # Expired members may linger until the next sweep; counting by score ignores them.
        return int(self._client.zcount(self._key("seats"), f"({_num(now)}", "+inf"))

    def get_session(self, session_id: str, now: float) -> TokenSession | None:
        key = self._key("session", session_id)
        fields = t.cast("dict[str, str]", self._client.hgetall(key))
        if not fields:
            return None
        session = _session_from(fields, session_id)
        return session if session.is_live(now) else None

    def find_refresh(self, refresh_hash: str, now: float) -> tuple[TokenSession, bool] | None:
        keys = [self._key("refresh", refresh_hash), self._key("used", refresh_hash)]
        reply = self._run("find_refresh", keys, [self.key_prefix, refresh_hash, _num(now)])
        if reply is None:
            return None
        current, sid, flat = reply
        return _session_from(_pairs(flat), sid), bool(current)

    def rotate_refresh(
        self, session_id: str, old_hash: str, new_hash: str, expires_at: float, now: float
    ) -> TokenSession | None:
        args = [
            self.key_prefix,
            session_id,
            old_hash,
            new_hash,
            _num(expires_at),
            _num(now),
            _ttl_ms(expires_at, now),
        ]
        key = self._key("session", session_id)

        def undo(flat: t.Any) -> None:
            if flat:  # the new hash was never handed out: the old one is current again
                back = [self.key_prefix, session_id, old_hash, new_hash, _num(now)]
                self._run("unrotate_refresh", [key], back)

        flat = self._write("rotate_refresh", [key], args, undo)
        return None if flat is None else _session_from(_pairs(flat), session_id)

    def unrotate_refresh(self, session_id: str, old_hash: str, new_hash: str, now: float) -> bool:
        args = [self.key_prefix, session_id, old_hash, new_hash, _num(now)]
        return bool(self._write("unrotate_refresh", [self._key("session", session_id)], args))

    def _end_session_args(self, session_id: str, now: float) -> list[str]:
        return [
            self.key_prefix,
            session_id,
            _num(now),
            _num(now + REVOKE_MARGIN),
            str(SWEEP_LIMIT),
            _epoch_candidate(),
        ]

    def _unstart(self, reply: t.Any, session_id: str, now: float) -> None:
        """End a session whose start too few replicas acknowledged (its seat is free)."""
        if reply[0] == 1:
            keys = [self._key("session", session_id)]
            self._run("end_session", keys, self._end_session_args(session_id, now))

    def end_session(self, session_id: str, now: float) -> TokenSession | None:
        args = self._end_session_args(session_id, now)
        flat = self._write("end_session", [self._key("session", session_id)], args)
        if not flat:
            return None
        session = _session_from(_pairs(flat), session_id)
        # An expired session is still removed and revoked, but nothing live ended.
        return session if session.is_live(now) else None

    def end_sessions(self, client_id: str | None, now: float) -> int:
        sessions = self._key("sessions")
        if client_id is None:
            keys = [sessions, sessions, sessions]
        else:
            keys = [
                sessions,
                self._key("client_sessions", client_id),
                self._key("client_seats", client_id),
            ]
        args = [
            self.key_prefix,
            client_id or "",
            _num(now),
            _num(now + REVOKE_MARGIN),
            str(SWEEP_LIMIT),
            _epoch_candidate(),
        ]
        return int(self._write("end_sessions", keys, args))

    def list_sessions(self, client_id: str | None, now: float) -> list[TokenSession]:
        index: t.Iterable[t.Any]
        if client_id is None:
            index = self._client.zrangebyscore(self._key("sessions"), f"({_num(now)}", "+inf")
        else:
            index = self._client.smembers(self._key("client_sessions", client_id))
        ids = [str(sid) for sid in index]
        # One round trip for all hashes; a session ended in between reads as empty.
        pipe = self._client.pipeline(transaction=False)
        for sid in ids:
            pipe.hgetall(self._key("session", sid))
        replies = t.cast("list[dict[str, str]]", pipe.execute())
        sessions = [
            _session_from(fields, sid) for sid, fields in zip(ids, replies, strict=True) if fields
        ]
        live = [s for s in sessions if s.is_live(now)]
        return sorted(live, key=lambda s: (s.created_at, s.session_id))

    # -- revocation --------------------------------------------------------------------

    def revoke(self, token_id: str, expires_at: float, now: float) -> None:
        args = [
            self.key_prefix,
            token_id,
            _num(expires_at),
            _num(now),
            str(SWEEP_LIMIT),
            _epoch_candidate(),
        ]
        self._write("revoke", [self._key("revoked")], args)

    def revocation_seq(self) -> int:
        value = self._client.get(self._key("revocation_seq"))
        return int(value or 0)

    def revocation_epoch(self) -> str:
        keys = [self._key("revocation_epoch")]
        return str(self._run("revocation_epoch", keys, [self.key_prefix, _epoch_candidate()]))

    def revocations_since(self, seq: int, now: float) -> tuple[dict[str, float], int]:
        args = [self.key_prefix, str(int(seq)), _num(now)]
        reply = self._run("revocations_since", [self._key("revoked_seq")], args)
        entries = {reply[i]: float(reply[i + 1]) for i in range(1, len(reply), 2)}
        return entries, int(reply[0])

    # -- admin console sessions --------------------------------------------------------

    def start_admin_session(self, session: AdminSession) -> None:
        key = self._key("admin", session.session_hash)
        # The session starts at created_at: its safety net runs from there (see above).
        ttl_ms = _ttl_ms(session.expires_at, session.created_at)
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(
            key,
            mapping={
                "username": session.username,
                "created_at": _num(session.created_at),
                "expires_at": _num(session.expires_at),
            },
        )
        pipe.pexpire(key, int(ttl_ms))
        pipe.execute()

    def touch_admin_session(
        self, session_hash: str, now: float, expires_at: float
    ) -> AdminSession | None:
        keys = [self._key("admin", session_hash)]
        args = [_num(now), _num(expires_at), _ttl_ms(expires_at, now)]
        flat = self._run("touch_admin_session", keys, args)
        return None if not flat else _admin_session_from(_pairs(flat), session_hash)

    def end_admin_session(self, session_hash: str) -> AdminSession | None:
        flat = self._run("end_admin_session", [self._key("admin", session_hash)], [])
        return None if not flat else _admin_session_from(_pairs(flat), session_hash)

    # -- recent security events --------------------------------------------------------

    def add_event(self, event: t.Mapping[str, str], keep: int = EVENTS_KEPT) -> None:
        key = self._key("events")
        # MULTI: the push and the trim happen together, so the list never grows past keep.
        pipe = self._client.pipeline(transaction=True)
        pipe.lpush(key, _to_json(dict(event)))
        pipe.ltrim(key, 0, max(keep, 1) - 1)
        pipe.execute()

    def recent_events(self, limit: int = 100) -> list[dict[str, str]]:
        if limit <= 0:
            return []  # LRANGE 0 -1 would mean every event
        values = t.cast("list[str]", self._client.lrange(self._key("events"), 0, limit - 1))
        return [json.loads(v) for v in values]

    # -- lockout counters --------------------------------------------------------------

    def record_failure(self, key: str, window: float, now: float) -> tuple[int, float]:
        until = now + window
        # A fresh id per call: a resend of this call's script is recognised, not counted.
        args = [_num(now), _num(until), _ttl_ms(until, now), secrets.token_hex(8)]
        count, stored_until = self._run("record_failure", [self._key("failures", key)], args)
        return int(count), float(stored_until)

    def failures(self, key: str, now: float) -> tuple[int, float]:
        count, until = t.cast(
            "list[str | None]",
            self._client.hmget(self._key("failures", key), ["count", "until"]),
        )
        if count is None or until is None or float(until) <= now:
            return 0, 0.0
        return int(count), float(until)

    def failures_many(self, keys: t.Sequence[str], now: float) -> list[tuple[int, float]]:
        # One round trip: the HMGETs in a pipeline (no MULTI: each read stands alone).
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(self._key("failures", key), ["count", "until"])
        replies = t.cast("list[list[str | None]]", pipe.execute())
        return [
            (0, 0.0)
            if count is None or until is None or float(until) <= now
            else (int(count), float(until))
            for count, until in replies
        ]

    def clear_failures(self, key: str) -> None:
        self._client.delete(self._key("failures", key))

    def release_failure(self, key: str, now: float) -> None:
        # A fresh id per call, as in record_failure: a resend takes back no second count.
        args = [_num(now), secrets.token_hex(8)]
        self._run("release_failure", [self._key("failures", key)], args)
