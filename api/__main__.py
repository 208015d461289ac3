"""``python -m api``: migrate the database, serve the API, or run the whole product embedded."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from api import admin
from api.settings import Settings


def _serve(host: str, port: int) -> None:
    import uvicorn

    from api.main import create_app
    from api.observability import configure_logging
    from api.queue import republish_stranded

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    with app.state.sessionmaker() as session:  # jobs an API process committed, never sent
        republish_stranded(session, app.state.celery)
    uvicorn.run(app, host=host, port=port, log_config=None)


def _openapi() -> str:
    """The app's OpenAPI schema as JSON, built on a scratch SQLite database (the frontend's typed
    client is generated from it)."""
    import json
    import tempfile
    from pathlib import Path

    from api.main import create_app

    with tempfile.TemporaryDirectory(prefix="qs-openapi-") as scratch:
        app = create_app(
            Settings(
                data_dir=Path(scratch),
                database_url=None,
                broker_url=None,
                blob_dir=None,
                auto_migrate=True,
            )
        )
        schema = app.openapi()
        app.state.engine.dispose()
    return json.dumps(schema, indent=1, sort_keys=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="upgrade the database to the newest revision")
    rev = sub.add_parser("revision", help="autogenerate a migration (read it before committing)")
    rev.add_argument("-m", "--message", required=True)
    for name, text in (
        ("serve", "serve the API"),
        ("embedded", "migrate, start one worker and serve the API"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
    sub.add_parser("openapi", help="print the OpenAPI schema (JSON) without a database")
    admin.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "openapi":
        print(_openapi())
        return 0
    settings = Settings()

    if args.command == "migrate":
        from api.db import upgrade_to_head

        upgrade_to_head(settings)
        print(f"database at head: {settings.resolved_database_url}")
        return 0
    if args.command == "users":
        return admin.run(args, settings)
    if args.command == "revision":
        from alembic import command

        from api.db import alembic_config

        command.revision(alembic_config(settings), message=args.message, autogenerate=True)
        return 0
    if args.command == "serve":
        _serve(args.host, args.port)
        return 0

    from api.db import upgrade_to_head

    upgrade_to_head(settings)
    password = admin.ensure_first_admin(settings)
    if password:
        print(
            f"first start: log in at http://{args.host}:{args.port}/ as "
            f"{admin.FIRST_ADMIN!r} with password {password!r} (shown once; change it with "
            f"`python -m api users password {admin.FIRST_ADMIN}`)",
            flush=True,
        )
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker"], env={**os.environ, "QS_WORKER_EXIT_WITH_PARENT": "1"}
    )
    print(
        f"quantization service: http://{args.host}:{args.port}/docs  (API under /api/v1; "
        f"data in {settings.data_dir.resolve()})",
        flush=True,
    )
    try:
        _serve(args.host, args.port)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
