"""Runtime configuration from the environment (pydantic-settings).

Every setting has an environment variable of the same name, upper-cased (e.g. `DATABASE_URL`,
`KAFKA_BOOTSTRAP`). Secrets are `SecretStr` so they never print in logs or `--help`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """All knobs of VÉLØ Oracle; defaults run everything embedded on this machine."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    velo_data_dir: Path = Field(
        default=PROJECT_ROOT / ".data",
        description="Where embedded PostgreSQL, recovery snapshots and caches live.",
    )
    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset means the embedded PostgreSQL."
    )
    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers.")
    velo_topic_mcm: str = Field(default="betfair.mcm", description="Topic of raw stream lines.")
    velo_topic_racecards: str = Field(default="racing.racecards", description="Racecard events.")
    velo_topic_dead_letters: str = Field(
        default="velo.dead_letters", description="Topic for bad messages, with the reason."
    )
    velo_topic_predictions: str = Field(
        default="velo.predictions", description="Win probabilities."
    )
    velo_scout_state_file: Path | None = Field(
        default=None, description="Where `velo scout` keeps its resume tokens across restarts."
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL; unset means the in-process online store."
    )
    betfair_username: str | None = None
    betfair_password: SecretStr | None = None
    betfair_app_key: SecretStr | None = None
    betfair_certs_dir: Path | None = None
    betfair_identity_url: str | None = None  # identity SSO base URL; unset = Betfair's
    betfair_api_url: str | None = None  # exchange API base URL; unset = Betfair's
    betfair_stream_host: str = "stream-api.betfair.com"
    betfair_stream_port: int = 443
    betfair_ca_file: Path | None = None  # trust this CA instead of the system's (tests)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process."""
    return Settings()
