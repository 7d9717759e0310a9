"""The yardstick: a token server written the way Authlib's Flask documentation shows.

Client and token models on SQLAlchemy (Authlib's ``sqla_oauth2`` mixins), an
``AuthorizationServer`` with the client credentials grant, and a ``ResourceProtector``
with the SQLAlchemy bearer token validator guarding ``GET /guarded``; ``GET /open``
is the same route unguarded. Kept in ``bench/`` to compare against, never imported by
the product.

The documentation uses Flask-SQLAlchemy; this app uses plain SQLAlchemy (a
``scoped_session`` removed at the end of each app context, which is what
Flask-SQLAlchemy does), so that the bench needs nothing beyond the test extras:
Authlib, SQLAlchemy, waitress. To run it with Flask-SQLAlchemy instead, ``pip install
flask-sqlalchemy`` (bench only, not a dependency of the product) and swap the session.

    AUTHLIB_INSECURE_TRANSPORT=1 python bench/authlib_app.py DATABASE_URL PORT [SCHEMA]

prints the client's credentials as one JSON line, then serves under waitress
(threads=4) until terminated. ``SCHEMA`` (PostgreSQL) holds the tables, created if
missing; ``vs_authlib.py`` drops it afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import time
import typing as t

import sqlalchemy as sa
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.integrations.flask_oauth2 import current_token
from authlib.integrations.flask_oauth2 import ResourceProtector
from authlib.integrations.sqla_oauth2 import create_bearer_token_validator
from authlib.integrations.sqla_oauth2 import create_query_client_func
from authlib.integrations.sqla_oauth2 import create_save_token_func
from authlib.integrations.sqla_oauth2 import OAuth2ClientMixin
from authlib.integrations.sqla_oauth2 import OAuth2TokenMixin
from authlib.oauth2.rfc6749 import grants
from flask import Flask
from sqlalchemy import orm


class Base(orm.DeclarativeBase):
    pass


class OAuthClient(Base, OAuth2ClientMixin):  # type: ignore[misc]
    __tablename__ = "oauth2_client"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)


class OAuthToken(Base, OAuth2TokenMixin):  # type: ignore[misc]
    __tablename__ = "oauth2_token"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    #: The documentation's foreign key to its user table; client credentials have none.
    user_id: orm.Mapped[int | None] = orm.mapped_column(nullable=True)


def create_app(
    url: str, schema: str | None = None
) -> tuple[Flask, orm.scoped_session[orm.Session]]:
    engine = sa.create_engine(url)
    if schema:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        engine = engine.execution_options(schema_translate_map={None: schema})
    Base.metadata.create_all(engine)
    db = orm.scoped_session(orm.sessionmaker(bind=engine))

    app = Flask("authlib_bench")
    app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"client_credentials": 600}

    @app.teardown_appcontext
    def remove_session(exc: BaseException | None) -> None:
        db.remove()

    authorization = AuthorizationServer(
        app,
        query_client=create_query_client_func(db, OAuthClient),
        save_token=create_save_token_func(db, OAuthToken),
    )
    authorization.register_grant(grants.ClientCredentialsGrant)
    require_oauth = ResourceProtector()
    require_oauth.register_token_validator(create_bearer_token_validator(db, OAuthToken)())

    @app.post("/token")
    def issue_token() -> t.Any:
        return authorization.create_token_response()

    @app.get("/open")
    def open_route() -> t.Any:
        return {"ok": True}

    @app.get("/guarded")
    @require_oauth("view")  # type: ignore[untyped-decorator]
    def guarded() -> t.Any:
        return {"ok": True, "client_id": current_token.client_id}

    return app, db


def create_client(db: orm.scoped_session[orm.Session]) -> tuple[str, str]:
    client = OAuthClient(
        client_id=secrets.token_urlsafe(16),
        client_secret=secrets.token_urlsafe(32),
        client_id_issued_at=int(time.time()),
    )
    client.set_client_metadata(
        {
            "client_name": "bench",
            "grant_types": ["client_credentials"],
            "scope": "view all",
            "token_endpoint_auth_method": "client_secret_basic",
        }
    )
    db.add(client)
    db.commit()
    credentials = (client.client_id, client.client_secret)
    db.remove()
    return credentials


def main(argv: list[str]) -> int:
    from waitress import serve

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain HTTP on loopback
    url, port = argv[0], int(argv[1])
    app, db = create_app(url, argv[2] if len(argv) > 2 else None)
    client_id, secret = create_client(db)
    print(json.dumps({"client_id": client_id, "client_secret": secret}), flush=True)
    serve(app, host="127.0.0.1", port=port, threads=4, _quiet=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
