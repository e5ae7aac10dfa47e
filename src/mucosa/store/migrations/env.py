"""Alembic's entry point for the store's migrations: they run on the connection :mod:`mucosa.store.schema`
hands over (``config.attributes["connection"]``), never on a URL of their own.

Importing this file outside a migration (e.g. by pytest's doctest collection) does nothing.
"""

from alembic import context


def run() -> None:
    connection = context.config.attributes["connection"]
    context.configure(connection=connection, render_as_batch=True, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


if hasattr(context, "config"):  # only while Alembic runs the migrations
    run()
