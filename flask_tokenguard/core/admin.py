"""The admin console's rules, without Flask: who may sign in, and server-side sessions.

An administrator is a built-in user created with ``--admin``, or whoever the app's
``@guard.admin_verifier`` accepts. Failed sign-ins are throttled as the password grant's
are: the attempt is reserved in the store before the KDF runs, so parallel guesses cannot
slip past the threshold and a throttled guess costs no hash.

The browser holds a random 256-bit session id in a cookie; the store keeps only its
SHA-256 (``AdminSession.session_hash``), so a copy of the store signs nobody in. The
session ends after ``TOKENGUARD_ADMIN_SESSION_TTL`` idle seconds, each request extending it.

A built-in administrator's cookie also carries a tag of the password hash it signed in
with, keyed by the cookie's own random part, and every request checks the user is still
there, still an administrator and still has that password: ``delete-user`` and
``set-password`` (or a name created again) end the console sessions too, without the store
having to find them. With ``@guard.admin_verifier`` the app owns its users, so only the
idle timeout and "Sign out" end a session.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import typing as t

from ..errors import LockedOutError
from ..models import AdminSession
from . import audit as events
from .security import hash_secret
from .security import kdf_slot
from .security import new_secret
from .users import authenticate_user

if t.TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings
    from ..stores.base import Store
    from .audit import Audit
    from .throttle import Throttle

#: ``fn(username, password) -> bool``, the app's own administrator check.
AdminVerifier = t.Callable[[str, str], bool]

#: The longest user name or password a sign-in accepts before any hashing.
MAX_CREDENTIAL_LENGTH = 256


@dataclasses.dataclass(frozen=True)
class SignIn:
    """A started admin session: the record kept in the store and the cookie's value."""

    session: AdminSession
    #: The value for the browser's cookie; shown nowhere else, stored only as its hash.
    cookie_value: str = dataclasses.field(repr=False)


def check_administrator(
    store: Store,
    settings: Settings,
    username: str,
    password: str,
    *,
    verifier: AdminVerifier | None,
    throttle: Throttle | None,
    now: float,
    audit: Audit | None = None,
) -> bool:
    """True if ``username`` and ``password`` name an administrator.

    Raises ``LockedOutError`` (429) when this address is over the threshold for the name
    or at all, without checking the password, and ``KdfBusyError`` (503) when every KDF
    slot stays busy. Failures are ``admin.sign_in_failed`` in the audit trail.
    """
    # Refused before any lookup: no store is asked about a name it could not hold.
    if not (0 < len(username) <= MAX_CREDENTIAL_LENGTH and username.isprintable()) or not (
        0 < len(password) <= MAX_CREDENTIAL_LENGTH and "\x00" not in password
    ):
        _failed(audit, username[:MAX_CREDENTIAL_LENGTH], "invalid_credentials")
        return False
    reserved = None
    if throttle is not None:
        try:
            reserved = throttle.reserve("admin", username, now)
        except LockedOutError:
            _failed(audit, username, "slow_down")
            raise
    with kdf_slot(settings.kdf_concurrency):
        if verifier is not None:
            accepted = bool(verifier(username, password))
        else:
            user = authenticate_user(store, username, password, cost=settings.password_hash_cost)
            # A user who is no administrator is refused like a wrong password, so the page
            # does not tell which names exist or which are administrators.
            accepted = user is not None and user.admin
    if not accepted:
        # The reservation already counted this failure.
        _failed(audit, username, "invalid_credentials")
        return False
    if throttle is not None:
        throttle.succeeded(reserved)
    return True


def _failed(audit: Audit | None, username: str, reason: str) -> None:
    if audit is not None:
        audit.emit(events.ADMIN_SIGN_IN_FAILED, subject=username or None, reason=reason)


def _password_tag(nonce: str, password_hash: str) -> str:
    # Keyed by the cookie's secret part: the tag tells nothing about the hash without it.
    digest = hmac.new(nonce.encode(), password_hash.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode()[:22]


def start_admin_session(
    store: Store, username: str, *, ttl: float, now: float, password_hash: str = ""
) -> SignIn:
    """Start a server-side admin session for ``username``; return it with its cookie value.

    ``password_hash`` is the built-in user's current hash ("" for an app's verifier): the
    cookie is bound to it, so a password change ends the session.
    """
    nonce = new_secret()
    cookie_value = f"{nonce}.{_password_tag(nonce, password_hash)}"
    session = AdminSession(
        session_hash=hash_secret(cookie_value),
        username=username,
        created_at=now,
        expires_at=now + ttl,
    )
    store.start_admin_session(session)
    return SignIn(session, cookie_value)


def resume_admin_session(
    store: Store, cookie_value: str | None, *, ttl: float, now: float, built_in: bool
) -> AdminSession | None:
    """The live admin session a cookie names, its idle lifetime extended; None if none.

    With ``built_in`` (no ``admin_verifier``), a session whose user was deleted, is no
    administrator any more or has another password is ended here and is None.
    """
    if not cookie_value or len(cookie_value) > MAX_CREDENTIAL_LENGTH:
        return None
    session = store.touch_admin_session(hash_secret(cookie_value), now, now + ttl)
    if session is None or not built_in:
        return session
    user = store.get_user(session.username)
    nonce, _, tag = cookie_value.partition(".")
    if (
        user is None
        or not user.admin
        or not hmac.compare_digest(tag.encode(), _password_tag(nonce, user.password_hash).encode())
    ):
        store.end_admin_session(session.session_hash)
        return None
    return session


def end_admin_session(store: Store, cookie_value: str | None) -> AdminSession | None:
    """End the admin session a cookie names; return it, or None if there was none."""
    if not cookie_value or len(cookie_value) > MAX_CREDENTIAL_LENGTH:
        return None
    return store.end_admin_session(hash_secret(cookie_value))
