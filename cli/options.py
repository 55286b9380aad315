"""Shared CLI options: every flag that has an environment twin shows it in `--help`."""

from __future__ import annotations

import argparse
import os


def env_default(variable: str, default: object) -> dict:
    """argparse kwargs whose default comes from `variable` when it is set."""
    return {"default": os.environ.get(variable, default)}


def add_database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        **env_default("DATABASE_URL", None),
        help="PostgreSQL URL [env DATABASE_URL]; unset: embedded PostgreSQL in VELO_DATA_DIR",
    )


def add_workers_option(parser: argparse.ArgumentParser, *flags: str) -> None:
    """Bytewax worker threads in this process (`flags` e.g. "-w", "--workers")."""
    parser.add_argument(
        *flags,
        dest="workers",
        type=int,
        **env_default("VELO_WORKERS", 1),
        help="Bytewax worker threads in this process [env VELO_WORKERS]",
    )
