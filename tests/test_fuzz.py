"""Property-based fuzzing of the token endpoint's parsing and of the bearer check.

Hypothesis generates requests to ``POST /token`` (HTTP Basic with arbitrary bytes and base64,
form bodies with arbitrary keys, values and encodings, JSON bodies of any shape, content types,
grant types and scopes) and to the guarded routes (arbitrary ``Authorization`` values, JWT-like
strings, tampered real tokens), through the Flask test client on the memory and SQLite stores.
For every request:

- the answer is never a 5xx (the store is up, so not even 503);
- an error is a JSON object whose ``error`` is one of the product's RFC codes, with
  ``Cache-Control: no-store``, and a 401 carries the matching ``WWW-Authenticate`` challenge;
- a request that fails writes no session, seat, client or user (failure counters and audit
  events are the only writes a failure may make), and a refresh token presented in a failed
  request still refreshes afterwards.

CI runs a bounded number of examples (the ``ci`` profile, the default). A longer run on demand::

    HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest -q tests/test_fuzz.py

(``long`` runs 5,000 examples per test; ``HYPOTHESIS_MAX_EXAMPLES=N`` overrides either profile.)
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import hmac
import json
import os
import re
import time
import typing as t
import urllib.parse
from pathlib import Path

import pytest
from flask import Flask
from hypothesis import event
from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st

import sample_app
from tests.helpers import basic
from tests.helpers import cli

settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    database=None,
    print_blob=True,
    # The app is built once per module (building it per example would dominate the run); the
    # only function-scoped fixture is the autouse context-leak check, which is per test anyway.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile("long", settings.get_profile("ci"), max_examples=5000)
_PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
FUZZ = settings(
    _PROFILE,
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES") or _PROFILE.max_examples),
)

#: Every ``error`` code the product answers with below 500 (STYLE.md's error table).
ERROR_CODES = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "license_unavailable",
    "unsupported_token_type",
    "invalid_token",
    "insufficient_scope",
    "slow_down",
}

PASSWORD = "correct horse battery staple"
BASIC_SCHEME = re.compile(r"basic(\s|$)", re.IGNORECASE)
RFC6749_DESCRIPTION = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


class Real(enum.Enum):
    """A placeholder for a real credential, resolved when the example runs."""

    CLIENT_ID = "client_id"
    SECRET = "secret"
    ALIAS = "alias"
    PUBLIC_ID = "public_id"
    USERNAME = "username"
    PASSWORD = "password"
    #: A refresh token issued for this example only (so a success may rotate it).
    REFRESH = "refresh"
    #: An access token of a live session.
    ACCESS = "access"


@dataclasses.dataclass
class World:
    """The app under test and the credentials it knows."""

    app: Flask
    http: t.Any
    client_id: str
    secret: str
    alias: str
    public_id: str
    access_token: str
    jwks: dict[str, t.Any]

    @property
    def store(self) -> t.Any:
        return self.app.extensions["tokenguard"].store(self.app)

    def fresh_refresh_token(self) -> tuple[str, str]:
        """A new session's refresh token and session id."""
        response = self.http.post(
            "/token",
            data={"grant_type": "client_credentials"},
            headers=basic(self.client_id, self.secret),
        )
        assert response.status_code == 200, response.json
        whoami = self.http.get(
            "/whoami", headers={"Authorization": f"Bearer {response.json['access_token']}"}
        )
        return str(response.json["refresh_token"]), str(whoami.json["session_id"])

    def refreshes(self, refresh_token: str) -> bool:
        response = self.http.post(
            "/token",
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
            headers=basic(self.client_id, self.secret),
        )
        return bool(response.status_code == 200)


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> t.Iterator[World]:
    directory: Path = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    store_url = "memory://" if request.param == "memory" else f"sqlite:///{directory}/fuzz.sqlite3"
    app = sample_app.create_app(
        {
            "TESTING": True,
            "TOKENGUARD_STORE_URL": store_url,
            "TOKENGUARD_PASSWORD_HASH_COST": 10,
            # A pool, so that seats are counted, large enough never to fill up.
            "TOKENGUARD_LICENSES": 1_000_000,
            # Throttling would soon answer every request with 429 and hide the parsing.
            "TOKENGUARD_LOCKOUT_THRESHOLD": 0,
        }
    )
    grants = ["--grant", "client_credentials", "--grant", "password", "--grant", "refresh_token"]
    confidential = cli(app, "create-client", "fuzzed", "--alias", "fuzz-alias", *grants)
    public = cli(app, "create-client", "fuzzed public", "--public")
    cli(app, "create-user", "alice", "--password-stdin", input=PASSWORD + "\n")
    http = app.test_client()
    token = http.post(
        "/token",
        data={"grant_type": "client_credentials"},
        headers=basic(confidential["client_id"], confidential["client_secret"]),
    )
    assert token.status_code == 200, token.json
    yield World(
        app=app,
        http=http,
        client_id=confidential["client_id"],
        secret=confidential["client_secret"],
        alias="fuzz-alias",
        public_id=public["client_id"],
        access_token=json.loads(token.data)["access_token"],
        jwks=json.loads(http.get("/jwks.json").data),
    )
    app.extensions["tokenguard"].close_store(app)


# --- what the store holds ---------------------------------------------------------------


def snapshot(world: World) -> tuple[t.Any, ...]:
    """Every session, seat, client and user the store holds (not failure counters or events)."""
    store = world.store
    now = time.time()
    return (
        sorted(store.list_sessions(None, now), key=lambda s: s.session_id),
        sorted(store.list_clients(), key=lambda c: c.client_id),
        sorted(store.list_users(), key=lambda u: u.username),
        store.seats_in_use(now),
    )


def note_outcome(response: t.Any) -> None:
    """Record the outcome (``--hypothesis-show-statistics`` shows how examples spread)."""
    body = response.json if response.is_json else None
    if isinstance(body, dict) and "error" in body:
        event(f"{response.status_code} {body['error']}: {body.get('error_description')}")
    else:
        event(str(response.status_code))


def assert_error_shape(response: t.Any) -> None:
    """An RFC 6749 5.2 / RFC 6750 3 error: JSON code, fixed description, the right headers."""
    assert response.status_code < 500, (response.status_code, response.data)
    body = json.loads(response.data)
    assert isinstance(body, dict), body
    error = body.get("error")
    assert error in ERROR_CODES, body
    # RFC 6749 5.2: error_description is limited to %x20-21 / %x23-5B / %x5D-7E.
    assert RFC6749_DESCRIPTION.fullmatch(body.get("error_description", "")), body
    assert response.headers.get("Cache-Control") == "no-store", response.headers
    challenge = response.headers.get("WWW-Authenticate", "")
    if response.status_code == 401:
        assert challenge.startswith(("Basic ", "Bearer ")), response.headers
    if error == "invalid_client" and response.status_code == 401:
        assert challenge.startswith("Basic "), response.headers
    if error == "invalid_token":
        assert response.status_code == 401 and challenge.startswith("Bearer "), response.headers
    if error in ("slow_down", "license_unavailable"):
        assert int(response.headers["Retry-After"]) >= 1, response.headers


# --- strategies -----------------------------------------------------------------------------

# Header values are latin-1 on the wire (waitress decodes them so); CR and LF end a header.
header_text = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=255, exclude_characters="\r\n"),
    max_size=60,
)
any_text = st.text(max_size=40)
scope_text = st.one_of(
    st.sampled_from(["", "view", "all", "view all", "all view", "admin", "view view", " view "]),
    st.lists(st.sampled_from(["view", "all", "x", "VIEW", "vi\u00e9w"]), max_size=25).map(" ".join),
    any_text,
)
grant_text = st.one_of(
    st.sampled_from(
        [
            "client_credentials",
            "password",
            "refresh_token",
            "authorization_code",
            "implicit",
            "urn:ietf:params:oauth:grant-type:device_code",
            "CLIENT_CREDENTIALS",
            "client_credentials ",
            "",
        ]
    ),
    any_text,
)
id_like = st.one_of(
    st.just(Real.CLIENT_ID),
    st.just(Real.ALIAS),
    st.just(Real.PUBLIC_ID),
    st.text(max_size=300),
)
secret_like = st.one_of(st.just(Real.SECRET), any_text, st.text(min_size=250, max_size=300))
token_like = st.one_of(
    st.just(Real.REFRESH), st.just(Real.ACCESS), any_text, st.text(min_size=40, max_size=50)
)

#: Values for the known parameters; anything else gets arbitrary text.
PARAM_VALUES: dict[str, st.SearchStrategy[t.Any]] = {
    "grant_type": grant_text,
    "client_id": id_like,
    "client_secret": secret_like,
    "scope": scope_text,
    "username": st.one_of(st.just(Real.USERNAME), st.text(max_size=300)),
    "password": st.one_of(st.just(Real.PASSWORD), any_text),
    "refresh_token": token_like,
}
param_name = st.one_of(st.sampled_from(sorted(PARAM_VALUES)), any_text)


@st.composite
def form_pairs(draw: st.DrawFn) -> list[tuple[str, t.Any]]:
    """Parameters as pairs: a name may repeat, a known one gets a plausible value."""
    names = draw(st.lists(param_name, max_size=8))
    return [(name, draw(PARAM_VALUES.get(name, any_text))) for name in names]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def json_object(draw: st.DrawFn) -> dict[str, t.Any]:
    """A JSON object whose known keys hold plausible values or values of another JSON type."""
    names = draw(st.lists(param_name, max_size=8, unique=True))
    return {name: draw(PARAM_VALUES.get(name, any_text) | json_values) for name in names}


@dataclasses.dataclass
class Body:
    kind: str  # "form", "json", "raw", "none"
    content: t.Any
    content_type: str | None
    encoding: str = "utf-8"


form_types = st.sampled_from(
    [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=utf-8",
        "application/x-www-form-urlencoded; charset=latin-1",
        "Application/X-WWW-Form-Urlencoded",
        "application/x-www-form-urlencoded;charset=",
        "multipart/form-data",
        "text/plain",
    ]
)
json_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "APPLICATION/JSON",
        "application/vnd.api+json",
        "text/json",
        "application/x-www-form-urlencoded",
    ]
)
bodies = st.one_of(
    st.builds(
        Body,
        kind=st.just("form"),
        content=form_pairs(),
        content_type=form_types,
        encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]),
    ),
    st.builds(Body, kind=st.just("json"), content=json_object(), content_type=json_types),
    st.builds(Body, kind=st.just("json"), content=json_values, content_type=json_types),
    st.builds(
        Body,
        kind=st.just("raw"),
        content=st.binary(max_size=200),
        content_type=st.one_of(st.none(), form_types, json_types, header_text),
    ),
    st.builds(Body, kind=st.just("none"), content=st.none(), content_type=st.none()),
)


@dataclasses.dataclass
class BasicAuth:
    kind: str  # "pair", "bytes", "text", "scheme"
    user: t.Any = None
    password: t.Any = None
    raw: t.Any = None
    scheme: str = "Basic"
    quote: bool = True


basic_headers = st.one_of(
    st.none(),
    st.builds(
        BasicAuth,
        kind=st.just("pair"),
        user=id_like,
        password=secret_like,
        scheme=st.sampled_from(["Basic", "basic", "BASIC", "Basic "]),
        quote=st.booleans(),
    ),
    st.builds(BasicAuth, kind=st.just("bytes"), raw=st.binary(max_size=80)),
    st.builds(BasicAuth, kind=st.just("text"), raw=header_text),
    st.builds(BasicAuth, kind=st.just("scheme"), raw=header_text),
)


# --- turning an example into a request --------------------------------------------------------


class Resolver:
    """Replace ``Real`` placeholders with this world's credentials (one refresh token each)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.refresh_token: str | None = None
        self.session_id: str | None = None

    def __call__(self, value: t.Any) -> t.Any:
        if isinstance(value, Real):
            return self.real(value)
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self(v) for v in value)
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        return value

    def real(self, which: Real) -> str:
        w = self.world
        if which is Real.REFRESH:
            if self.refresh_token is None:
                self.refresh_token, self.session_id = w.fresh_refresh_token()
            return self.refresh_token
        return {
            Real.CLIENT_ID: w.client_id,
            Real.SECRET: w.secret,
            Real.ALIAS: w.alias,
            Real.PUBLIC_ID: w.public_id,
            Real.USERNAME: "alice",
            Real.PASSWORD: PASSWORD,
            Real.ACCESS: w.access_token,
        }[which]


def on_the_wire(value: str) -> str:
    """A header value as a server hands it to the app: without surrounding blanks (RFC 9110
    5.5), which waitress strips and the test client would not."""
    return value.strip(" \t")


def authorization(auth: BasicAuth | None, resolve: Resolver) -> dict[str, str]:
    if auth is None:
        return {}
    if auth.kind == "pair":
        user, password = str(resolve(auth.user)), str(resolve(auth.password))
        if auth.quote:  # RFC 6749 2.3.1: form-encode, then base64
            user, password = urllib.parse.quote_plus(user), urllib.parse.quote_plus(password)
        raw = f"{user}:{password}".encode()
        value = f"{auth.scheme} {base64.b64encode(raw).decode()}"
    elif auth.kind == "bytes":
        value = "Basic " + base64.b64encode(auth.raw).decode()
    elif auth.kind == "text":
        value = "Basic " + auth.raw
    else:
        value = auth.raw
    return {"Authorization": on_the_wire(value)}


def post_kwargs(body: Body, resolve: Resolver) -> dict[str, t.Any]:
    kwargs: dict[str, t.Any] = {}
    if body.kind == "form":
        pairs = [(name, str(resolve(value))) for name, value in body.content]
        kwargs["data"] = urllib.parse.urlencode(pairs, encoding=body.encoding, errors="replace")
    elif body.kind == "json":
        kwargs["data"] = json.dumps(resolve(body.content))
    elif body.kind == "raw":
        kwargs["data"] = body.content
    if body.content_type is not None:
        kwargs["content_type"] = body.content_type
    return kwargs


def check_failure_wrote_nothing(
    world: World,
    before: tuple[t.Any, ...],
    response: t.Any,
    resolve: Resolver,
    headers: dict[str, str],
) -> None:
    if response.status_code < 400:
        return
    assert_error_shape(response)
    if response.json["error"] == "invalid_client":
        # RFC 6749 5.2: 401 with a Basic challenge exactly when Basic was used.
        used_basic = BASIC_SCHEME.match(headers.get("Authorization", "")) is not None
        assert (response.status_code == 401) == used_basic, (headers, response.json)
    after = snapshot(world)
    if (
        after != before
        and resolve.session_id is not None
        and response.json["error"] == "invalid_grant"
    ):
        # A refresh token presented by another client ends its session (RFC 6749 10.4, the
        # Security BCP 4.14): the one change a failed request may make. Nothing else changed.
        sessions, clients, users, seats = before
        ended = [s for s in sessions if s.session_id == resolve.session_id]
        assert ended, response.json
        left = [s for s in sessions if s.session_id != resolve.session_id]
        assert after == (left, clients, users, seats - ended[0].holds_seat), response.json
        assert not world.refreshes(str(resolve.refresh_token))
        return
    assert after == before, response.json
    if resolve.refresh_token is not None:
        # A failed request neither burned nor ended the session it named.
        assert world.refreshes(resolve.refresh_token), response.json


# --- the token endpoint -------------------------------------------------------------------------


@FUZZ
@given(body=bodies, auth=basic_headers, query=st.one_of(st.none(), form_pairs()))
def test_token_endpoint_parsing(
    world: World, body: Body, auth: BasicAuth | None, query: list[tuple[str, t.Any]] | None
) -> None:
    resolve = Resolver(world)
    headers = authorization(auth, resolve)
    kwargs = post_kwargs(body, resolve)
    if query is not None:
        kwargs["query_string"] = urllib.parse.urlencode([(k, str(resolve(v))) for k, v in query])
    before = snapshot(world)
    response = world.http.post("/token", headers=headers, **kwargs)
    assert response.status_code < 500, (response.status_code, response.data)
    note_outcome(response)
    if response.status_code == 200:
        assert response.json["token_type"] == "Bearer"
        assert response.headers["Cache-Control"] == "no-store"
        return
    check_failure_wrote_nothing(world, before, response, resolve, headers)


def likely(real: Real, other: st.SearchStrategy[t.Any]) -> st.SearchStrategy[t.Any]:
    """Mostly the real value, sometimes anything else."""
    return st.one_of(st.just(real), st.just(real), st.just(real), other)


@st.composite
def plausible_requests(draw: st.DrawFn) -> tuple[list[tuple[str, t.Any]], BasicAuth | None]:
    """A request of one of the grants, mostly well formed, with a few parts fuzzed."""
    grant = draw(st.sampled_from(["client_credentials", "password", "refresh_token"]))
    params: list[tuple[str, t.Any]] = [("grant_type", grant)]
    auth: BasicAuth | None = None
    mode = draw(st.sampled_from(["basic", "body", "alias", "public", "fuzzed"]))
    if mode in ("basic", "alias"):
        user = Real.CLIENT_ID if mode == "basic" else Real.ALIAS
        auth = BasicAuth(
            "pair", user, draw(likely(Real.SECRET, secret_like)), quote=draw(st.booleans())
        )
    elif mode == "body":
        params += [("client_id", draw(likely(Real.CLIENT_ID, id_like)))]
        params += [("client_secret", draw(likely(Real.SECRET, secret_like)))]
    elif mode == "public":
        params += [("client_id", Real.PUBLIC_ID)]
    else:
        auth = draw(basic_headers)
    if grant == "password":
        params += [("username", draw(likely(Real.USERNAME, PARAM_VALUES["username"])))]
        params += [("password", draw(likely(Real.PASSWORD, PARAM_VALUES["password"])))]
    if grant == "refresh_token":
        params += [("refresh_token", draw(likely(Real.REFRESH, token_like)))]
    if draw(st.booleans()):
        params += [("scope", draw(scope_text))]
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        params += draw(form_pairs())  # extra, unknown or repeated parameters
    return draw(st.permutations(params)), auth


@FUZZ
@given(request=plausible_requests(), as_json=st.booleans())
def test_token_grants_with_fuzzed_parts(
    world: World, request: tuple[list[tuple[str, t.Any]], BasicAuth | None], as_json: bool
) -> None:
    """Each grant, mostly well formed, with its parameters and client authentication fuzzed."""
    pairs, auth = request
    resolve = Resolver(world)
    headers = authorization(auth, resolve)
    params = [(k, str(resolve(v))) for k, v in pairs]
    before = snapshot(world)
    if as_json:
        response = world.http.post("/token", headers=headers, json=dict(params))
    else:
        response = world.http.post(
            "/token",
            headers=headers,
            data=urllib.parse.urlencode(params),
            content_type="application/x-www-form-urlencoded",
        )
    assert response.status_code < 500, (response.status_code, response.data)
    note_outcome(response)
    if response.status_code == 200:
        assert set(response.json) >= {"access_token", "refresh_token", "expires_in", "scope"}
        assert response.headers["Cache-Control"] == "no-store"
        return
    check_failure_wrote_nothing(world, before, response, resolve, headers)


# --- the bearer check ---------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@dataclasses.dataclass
class Tamper:
    """A change to the real access token."""

    op: str
    index: int
    char: str
    claims: dict[str, t.Any]

    def apply(self, world: World) -> str:
        token = world.access_token
        head, payload, signature = token.split(".")
        if self.op == "replace":
            i = self.index % len(token)
            return token[:i] + self.char + token[i + 1 :]
        if self.op == "insert":
            i = self.index % (len(token) + 1)
            return token[:i] + self.char + token[i:]
        if self.op == "delete":
            i = self.index % len(token)
            return token[:i] + token[i + 1 :]
        if self.op == "truncate":
            return token[: self.index % len(token)]
        if self.op == "no_signature":
            return f"{head}.{payload}."
        if self.op == "alg_none":
            header = {"alg": "none", "typ": "at+jwt"}
            return f"{b64url(json.dumps(header).encode())}.{payload}."
        claims = {**json.loads(unb64url(payload)), **self.claims}
        forged = b64url(json.dumps(claims).encode())
        if self.op == "claims":  # new claims under the old signature
            return f"{head}.{forged}.{signature}"
        # "hs256": the algorithm confusion attack, keyed with the published public key.
        header_json = json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": self.kid(world)})
        signing_input = f"{b64url(header_json.encode())}.{forged}"
        key = json.dumps(world.jwks["keys"][0]).encode()
        mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(mac)}"

    @staticmethod
    def kid(world: World) -> str:
        return str(json.loads(unb64url(world.access_token.split(".")[0])).get("kid", ""))


claim_values = st.dictionaries(
    st.sampled_from(["exp", "iat", "nbf", "iss", "aud", "sub", "client_id", "scope", "sid", "jti"]),
    json_values | st.just(2**40) | st.just("http://evil.example"),
    max_size=3,
)
tampers = st.builds(
    Tamper,
    op=st.sampled_from(
        ["replace", "insert", "delete", "truncate", "no_signature", "alg_none", "claims", "hs256"]
    ),
    index=st.integers(min_value=0, max_value=2000),
    char=st.characters(min_codepoint=0x21, max_codepoint=0x7E),
    claims=claim_values,
)


@st.composite
def jwt_like(draw: st.DrawFn) -> str:
    """Three dot-separated base64url segments: JSON header and claims, random signature."""
    header = draw(
        st.fixed_dictionaries(
            {"alg": st.sampled_from(["RS256", "ES256", "HS256", "none", "", "EdDSA"])},
            optional={
                "kid": any_text,
                "typ": st.sampled_from(["at+jwt", "JWT", ""]),
                "crit": json_values,
            },
        )
    )
    claims = draw(claim_values | json_values)
    segments = [
        b64url(json.dumps(header).encode()),
        b64url(json.dumps(claims).encode()),
        b64url(draw(st.binary(max_size=300))),
    ]
    return ".".join(segments[: draw(st.integers(min_value=1, max_value=3))])


bearer_values = st.one_of(
    header_text,
    st.builds(
        lambda s, v: f"{s} {v}", st.sampled_from(["Bearer", "bearer", "BEARER"]), header_text
    ),
    st.builds(lambda v: f"Bearer {v}", jwt_like()),
    st.builds(lambda v: ("tamper", v), tampers),
    st.sampled_from(
        [
            "Bearer",
            "Bearer ",
            "Bearer  ",
            "Bearer ..",
            "Bearer a.b.c",
            "Basic Zm9vOmJhcg==",
            "Bearer real Bearer real",
            "Bearer real",
            "bearer real",
            "Bearer  real",
            "Bearer real ",
            "Bearer\treal",
            "Bearer real,Bearer real",
        ]
    ),
)


def same_token(presented: str, real: str) -> bool:
    """Whether two compact JWTs decode to the same bytes (base64 has spare bits at the end)."""
    try:
        return [unb64url(s) for s in presented.split(".")] == [unb64url(s) for s in real.split(".")]
    except ValueError:
        return False


@FUZZ
@given(
    value=bearer_values,
    route=st.sampled_from([("GET", "/whoami"), ("GET", "/orders"), ("POST", "/logoff")]),
)
def test_bearer_check(world: World, value: t.Any, route: tuple[str, str]) -> None:
    if isinstance(value, tuple):
        token = value[1].apply(world)
        header = f"Bearer {token}"
    else:
        header = value.replace("real", world.access_token)
        token = header.partition(" ")[2].strip()
    before = snapshot(world)
    method, path = route
    if path == "/logoff" and (
        world.access_token in header or same_token(token, world.access_token)
    ):
        return  # it would end the session every other example relies on
    header = on_the_wire(header)
    response = world.http.open(path, method=method, headers={"Authorization": header})
    assert response.status_code < 500, (response.status_code, response.data)
    note_outcome(response)
    if response.status_code < 400:
        assert same_token(token, world.access_token), (header, response.data)
        return
    assert_error_shape(response)
    assert response.status_code in (400, 401), response.json
    assert snapshot(world) == before, response.json
    # The real token still works: a rejected forgery ended nothing.
    whoami = world.http.get("/whoami", headers={"Authorization": f"Bearer {world.access_token}"})
    assert whoami.status_code == 200, whoami.json
