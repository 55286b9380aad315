"""Model options of `velo replay`, `velo worker` and `velo demo`: which model scores races."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from models.live_scoring import LiveRaceScorer

TRAIN_HINT = (
    "velo train --hkjc ../shared/data/racing/hkjc --train-until 2021-08-31 "
    "--valid-until 2023-08-31 --promote"
)


class ScorerUnavailableError(RuntimeError):
    """The model or its feature history could not be opened (message says why)."""


def add_model_options(parser: argparse.ArgumentParser, *, disable_flag: bool) -> None:
    model = parser.add_mutually_exclusive_group() if disable_flag else parser
    model.add_argument(
        "--model",
        metavar="VERSION|DIR",
        help="model that scores runners (a registry version or a model directory); "
        "default: the promoted version",
    )
    if disable_flag:
        model.add_argument("--no-model", action="store_true", help="do not score runners")
    parser.add_argument(
        "--score-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="score a race at most once per this many seconds of publish time",
    )


def load_scorer(model: str | None, console: Console) -> LiveRaceScorer | None:
    """The named model (or the promoted one) over the live feature history; None when no
    model is named and none is promoted."""
    import redis

    from connectors.settings import get_settings
    from models.live_scoring import LiveRaceScorer, live_history
    from models.registry import default_root, promoted_version, resolve_model_dir

    if model is None and promoted_version(default_root()) is None:
        return None
    try:
        model_dir = resolve_model_dir(model)
        history, description = live_history(get_settings().redis_url)
        scorer = LiveRaceScorer(model_dir, history)
    except (FileNotFoundError, ValueError, redis.RedisError) as error:
        raise ScorerUnavailableError(
            f"cannot score with model {model or '(promoted)'}: {error}"
        ) from error
    console.print(f"scoring with model {scorer.version}; features: {description}")
    return scorer
