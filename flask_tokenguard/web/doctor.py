"""``flask tokenguard doctor``: what a deployment gets wrong, each finding with its fix.

Each check is a small function ``check(ctx) -> list[Finding]``. They run in order; a check
that needs the store is skipped (with its own finding) when the store cannot be reached,
so the command always reports. The store is asked in a worker thread with a timeout, so
a store that hangs cannot hang the command either.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import ipaddress
import json
import sys
import time
import typing as t

import click
from flask import current_app
from flask.cli import with_appcontext

from ..errors import ConfigurationError
from ..errors import StoreError

#: Seconds each question to the store may take.
STORE_TIMEOUT = 5.0
#: A signing key older than this, with no automatic rotation, is worth a warning.
KEY_AGE_WARNING = 180 * 86400

Finding = dict[str, str]


def finding(level: str, check: str, message: str) -> Finding:
    """One finding: ``level`` is ``"error"``, ``"warning"`` or ``"ok"``."""
    return {"level": level, "check": check, "message": message}


@dataclasses.dataclass
class Context:
    """What the checks look at: the settings, the store, the address ``serve`` binds."""

    settings: t.Any
    store: t.Any
    host: str
    timeout: float = STORE_TIMEOUT
    store_ok: bool = False
    _pool: concurrent.futures.ThreadPoolExecutor | None = None

    def ask(self, fn: t.Callable[[], t.Any]) -> t.Any:
        """Run ``fn`` against the store, raising ``StoreError`` after ``timeout`` seconds."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="tokenguard-doctor"
            )
        future = self._pool.submit(fn)
        try:
            return future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            raise StoreError(f"no answer within {self.timeout:g} s") from None

    def close(self) -> None:
        """Let a hung store call go; it must not keep the command from exiting."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _describe(exc: BaseException) -> str:
    original = getattr(exc, "original", None)
    return f"{exc} ({original})" if original is not None else str(exc)


def check_store(ctx: Context) -> list[Finding]:
    """The store answers a round trip."""
    try:
        ctx.ask(ctx.store.check)
    except Exception as exc:  # noqa: BLE001 - any driver failure is the finding
        if isinstance(exc, ConfigurationError) or "schema version" in str(exc):
            # It answered: with tables of another release.
            return [
                finding("ok", "store", f"The store at {_redact(ctx.settings.store_url)} answers."),
                _schema_error(exc),
            ]
        return [
            finding(
                "error",
                "store",
                f"The store at {_redact(ctx.settings.store_url)} cannot be reached: "
                f"{_describe(exc)}. Start it or fix TOKENGUARD_STORE_URL / "
                "TOKENGUARD_STORE_OPTIONS; the checks that need the store were skipped.",
            )
        ]
    ctx.store_ok = True
    return [finding("ok", "store", f"The store at {_redact(ctx.settings.store_url)} answers.")]


def _schema_error(exc: BaseException) -> Finding:
    return finding(
        "error",
        "schema",
        f"{exc}. The store was written by a newer flask-tokenguard: upgrade this "
        "installation to that release (every process sharing a store runs one release).",
    )


def check_schema(ctx: Context) -> list[Finding]:
    """The store's tables are the version this release reads (reading them creates or
    migrates them; a newer version is refused)."""
    if not ctx.store_ok:
        return []
    try:
        ctx.ask(lambda: ctx.store.signing_keys(time.time()))
        ctx.ask(lambda: ctx.store.seats_in_use(time.time()))
    except ConfigurationError as exc:
        return [_schema_error(exc)]
    except Exception as exc:  # noqa: BLE001
        return [
            finding(
                "error",
                "schema",
                f"The store answers but its tables cannot be read: {_describe(exc)}. "
                "Check that the store's user may create and use tables in its schema.",
            )
        ]
    return [finding("ok", "schema", "The store's schema is current.")]


def check_signing_key(ctx: Context) -> list[Finding]:
    """The signing key's age against ``TOKENGUARD_KEY_ROTATION``."""
    if not ctx.store_ok:
        return []
    now = time.time()
    try:
        keys = ctx.ask(lambda: ctx.store.signing_keys(now))
    except Exception:  # noqa: BLE001 - reported by check_schema
        return []
    live = [k for k in keys if k.retire_at is None]
    if not live:
        return [
            finding("ok", "signing_key", "No signing key yet: the first token request makes one.")
        ]
    newest = max(live, key=lambda k: k.created_at)
    age = now - newest.created_at
    rotation = ctx.settings.key_rotation
    days = age / 86400
    if rotation is not None:
        # The key ring replaces an expired key on the next token request; one far past due
        # means no token has been issued for a long while, or rotation is failing.
        if age > 2 * rotation:
            return [
                finding(
                    "warning",
                    "signing_key",
                    f"The signing key {newest.kid} is {days:.1f} days old, more than twice "
                    f"TOKENGUARD_KEY_ROTATION ({rotation} s). Run `flask tokenguard rotate-keys`.",
                )
            ]
        return [
            finding(
                "ok",
                "signing_key",
                f"The signing key {newest.kid} is {days:.1f} days old "
                f"(rotated every {rotation} s).",
            )
        ]
    if age > KEY_AGE_WARNING:
        return [
            finding(
                "warning",
                "signing_key",
                f"The signing key {newest.kid} is {days:.0f} days old and never rotates. "
                "Run `flask tokenguard rotate-keys`, or set TOKENGUARD_KEY_ROTATION "
                "(seconds) to rotate it automatically.",
            )
        ]
    return [
        finding(
            "ok",
            "signing_key",
            f"The signing key {newest.kid} is {days:.1f} days old.",
        )
    ]


def check_issuer(ctx: Context) -> list[Finding]:
    """``TOKENGUARD_ISSUER`` is set."""
    if ctx.settings.issuer:
        return [finding("ok", "issuer", f"TOKENGUARD_ISSUER is {ctx.settings.issuer}.")]
    return [
        finding(
            "warning",
            "issuer",
            "TOKENGUARD_ISSUER is not set: only loopback hosts (or SERVER_NAME) are served, and "
            "any other host gets 400. Set it to the public base URL, e.g. "
            "TOKENGUARD_ISSUER=https://auth.example.com, the same in every process.",
        )
    ]


def _is_loopback_host(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_https(ctx: Context) -> list[Finding]:
    """HTTPS and proxy settings fit the address the server binds."""
    settings = ctx.settings
    if (
        settings.require_https
        and settings.trusted_proxy is None
        and not _is_loopback_host(ctx.host)
    ):
        return [
            finding(
                "error",
                "https",
                f"TOKENGUARD_REQUIRE_HTTPS is on, no TOKENGUARD_TRUSTED_PROXY is set and the "
                f"server binds {ctx.host}: waitress speaks plain HTTP, so every client but "
                "loopback gets 400 'HTTPS required'. Put a TLS proxy (IIS, nginx) in front "
                "and set TOKENGUARD_TRUSTED_PROXY to its address, or bind 127.0.0.1.",
            )
        ]
    if settings.trusted_proxy is not None and not settings.require_https:
        return [
            finding(
                "warning",
                "https",
                f"TOKENGUARD_TRUSTED_PROXY is {settings.trusted_proxy} but "
                "TOKENGUARD_REQUIRE_HTTPS is off: secrets and tokens may cross the network "
                "in plain HTTP. Set TOKENGUARD_REQUIRE_HTTPS=true.",
            )
        ]
    return [finding("ok", "https", "HTTPS and proxy settings are consistent.")]


def _redis_client(store: t.Any) -> t.Any:
    if not type(store).__module__.startswith("flask_tokenguard.stores.redis"):
        return None
    return getattr(store, "_client", None)


def check_redis(ctx: Context) -> list[Finding]:
    """Redis keeps every key (``maxmemory-policy noeviction``) and survives a restart."""
    client = _redis_client(ctx.store)
    if client is None or not ctx.store_ok:
        return []
    findings: list[Finding] = []
    try:
        config = ctx.ask(lambda: client.config_get("*"))
    except Exception as exc:  # noqa: BLE001 - CONFIG is often disabled on managed Redis
        return [
            finding(
                "warning",
                "redis_config",
                f"Cannot read the Redis configuration ({_describe(exc)}). Check by hand that "
                "maxmemory-policy is noeviction and that RDB or AOF persistence is on.",
            )
        ]
    config = {str(k): str(v) for k, v in config.items()}
    policy = config.get("maxmemory-policy", "noeviction")
    if policy == "noeviction":
        findings.append(finding("ok", "redis_eviction", "Redis maxmemory-policy is noeviction."))
    else:
        findings.append(
            finding(
                "error",
                "redis_eviction",
                f"Redis maxmemory-policy is {policy}: under memory pressure Redis deletes keys, "
                "losing clients, sessions and seats. Run `CONFIG SET maxmemory-policy "
                "noeviction` and put `maxmemory-policy noeviction` in redis.conf.",
            )
        )
    save = config.get("save", "").strip()
    aof = config.get("appendonly", "no").strip().lower()
    if not save and aof != "yes":
        findings.append(
            finding(
                "warning",
                "redis_persistence",
                "Redis has neither RDB snapshots nor AOF: a restart loses every client, user "
                "and signing key. Set `appendonly yes` (or a `save` schedule) in redis.conf.",
            )
        )
    else:
        findings.append(finding("ok", "redis_persistence", "Redis persists its data."))
    return findings


def check_licenses(ctx: Context) -> list[Finding]:
    """``TOKENGUARD_LICENSES`` against the seats held now."""
    licenses = ctx.settings.licenses
    if licenses is None:
        return [finding("ok", "licenses", "TOKENGUARD_LICENSES is unset: seats are not limited.")]
    if not ctx.store_ok:
        return []
    try:
        in_use = ctx.ask(lambda: ctx.store.seats_in_use(time.time()))
    except Exception:  # noqa: BLE001 - reported by check_schema
        return []
    if in_use > licenses:
        return [
            finding(
                "warning",
                "licenses",
                f"{in_use} seats are in use but TOKENGUARD_LICENSES is {licenses}: no new "
                "licensed session starts until sessions end. Raise TOKENGUARD_LICENSES or end "
                "sessions with `flask tokenguard logoff`.",
            )
        ]
    if licenses == 0:
        return [
            finding(
                "warning",
                "licenses",
                "TOKENGUARD_LICENSES is 0: no licensed scope can be granted. Set the number "
                "of seats, or unset it for no limit.",
            )
        ]
    return [finding("ok", "licenses", f"{in_use} of {licenses} seats in use.")]


#: Every check, in the order they are reported.
CHECKS: tuple[t.Callable[[Context], list[Finding]], ...] = (
    check_store,
    check_schema,
    check_signing_key,
    check_issuer,
    check_https,
    check_redis,
    check_licenses,
)


def _redact(url: str) -> str:
    """``url`` without its password."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    userinfo, _, hostpart = rest.partition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user + ':***' if ':' in userinfo else user}@{hostpart}"


def run_checks(
    settings: t.Any, store: t.Any, host: str, timeout: float | None = None
) -> list[Finding]:
    """Run every check; a check that fails unexpectedly becomes an error finding."""
    ctx = Context(settings, store, host, STORE_TIMEOUT if timeout is None else timeout)
    findings: list[Finding] = []
    try:
        for check in CHECKS:
            try:
                findings.extend(check(ctx))
            except Exception as exc:  # noqa: BLE001 - one broken check must not hide the rest
                name = check.__name__.removeprefix("check_")
                findings.append(finding("error", name, f"The check failed: {exc!r}"))
    finally:
        ctx.close()
    return findings


_MARK = {"ok": "ok     ", "warning": "WARNING", "error": "ERROR  "}


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option(
    "--host",
    default=None,
    help="The address `serve` binds [TOKENGUARD_SERVE_HOST or 127.0.0.1].",
)
@with_appcontext
def doctor_command(as_json: bool, host: str | None) -> None:
    """Check the deployment; print each finding with its fix; exit 1 on any error."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    state = app.extensions["tokenguard"].state(app)
    bind = host or str(app.config.get("TOKENGUARD_SERVE_HOST") or "127.0.0.1")
    findings = run_checks(state.settings, state.store, bind)
    ok = not any(f["level"] == "error" for f in findings)
    if as_json:
        click.echo(json.dumps({"ok": ok, "findings": findings}, indent=2))
    else:
        for item in findings:
            click.echo(f"{_MARK[item['level']]} {item['check']}: {item['message']}")
        click.echo("No errors." if ok else "Errors found: fix them before serving.")
    if not ok:
        sys.exit(1)
