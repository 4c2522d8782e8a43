"""The service's login role: `python -m audits_service.roles`, run after the migrations.

The migrations create the group role `audits_app` with exactly the privileges the service
needs (it may change records; it may only add to the trail). The service must log in as a
member of that group, never as the tables' owner: an owner can disable the trail's
triggers. This command creates (or updates) such a login role, connecting with
`DATABASE_URL` (the migrations' owner or an administrator):

    AUDITS_DB_USER      login role to create or update (default `audits_service`)
    AUDITS_DB_PASSWORD  its password (unset: a new role gets none, for servers that trust
                        local logins; an existing one keeps its own)
"""

import asyncio
import os
import sys

import asyncpg
from loguru import logger
from sqlalchemy.engine import make_url

from audits_service.config import normalise_database_url
from servicekit.logs import configure_logging

SERVICE_GROUP = "audits_app"
DEFAULT_LOGIN = "audits_service"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


async def ensure_login_role(admin_url: str, login: str, password: str | None) -> None:
    url = make_url(normalise_database_url(admin_url)).set(drivername="postgresql")
    connection = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", login)
        verb = "ALTER" if exists else "CREATE"
        # Without a password an existing role keeps the one it has.
        secret = "" if password is None else f" PASSWORD {_literal(password)}"
        await connection.execute(f"{verb} ROLE {_quote(login)} LOGIN{secret}")
        await connection.execute(f"GRANT {SERVICE_GROUP} TO {_quote(login)}")
    finally:
        await connection.close()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def service_url(admin_url: str, login: str, password: str | None) -> str:
    """`admin_url` with the login role's credentials instead."""
    url = make_url(admin_url).set(username=login, password=password)
    return url.render_as_string(hide_password=False)


def main() -> int:
    configure_logging("audits-role", os.environ.get("LOG_LEVEL", "INFO"))
    admin_url = os.environ.get("DATABASE_URL")
    if not admin_url:
        logger.error("DATABASE_URL is required")
        return 2
    login = os.environ.get("AUDITS_DB_USER", DEFAULT_LOGIN)
    asyncio.run(ensure_login_role(admin_url, login, os.environ.get("AUDITS_DB_PASSWORD")))
    logger.info("login role is a member of the service group", login=login, group=SERVICE_GROUP)
    return 0


if __name__ == "__main__":
    sys.exit(main())
