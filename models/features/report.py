"""Feature report: coverage and univariate signal of every feature, on a training period only.

    python -m models.features.report --hkjc ../shared/data/racing/hkjc --until 2021-12-31

Signal is each feature's conditional-logit pseudo-R² alone (1 - logL/logL(uniform), one weight
fitted by Newton's method on the standardised feature) and its within-race correlation with
winning, both on races up to `--until` only, so the report never looks at later seasons.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson
import polars as pl

from connectors.hkjc import load_hkjc
from models.features.frame import (
    FEATURE_DESCRIPTIONS,
    FEATURE_GROUPS,
    FeatureState,
    compute_features,
)
from models.features.runs import cards_from_entries

Array = npt.NDArray[np.float64]
NEWTON_STEPS = 25


class Races:
    """Runners grouped race by race (contiguous), with segment sums."""

    def __init__(self, race_ids: npt.NDArray[np.str_], won: Array) -> None:
        change = np.flatnonzero(race_ids[1:] != race_ids[:-1]) + 1
        self.starts = np.concatenate(([0], change))
        self.sizes = np.diff(np.append(self.starts, race_ids.size)).astype(np.float64)
        self.index = np.repeat(np.arange(self.starts.size), self.sizes.astype(np.int64))
        self.won = won
        self.uniform_loglik = float(won @ -np.log(self.sizes[self.index]))

    def sum(self, values: Array) -> Array:
        return np.add.reduceat(values, self.starts)

    def log_softmax(self, utility: Array) -> Array:
        shifted = utility - np.maximum.reduceat(utility, self.starts)[self.index]
        return shifted - np.log(self.sum(np.exp(shifted)))[self.index]

    def pseudo_r2(self, log_p: Array) -> float:
        return 1.0 - float(self.won @ log_p) / self.uniform_loglik


def single_feature_r2(races: Races, x: Array) -> tuple[float, float]:
    """(pseudo-R², weight) of a one-feature conditional logit, by Newton's method."""
    scale = x.std()
    if scale < 1e-12:
        return 0.0, 0.0
    z = (x - x.mean()) / scale
    weight = 0.0
    for _ in range(NEWTON_STEPS):
        p = np.exp(races.log_softmax(weight * z))
        race_won = races.sum(races.won)
        mean_z = races.sum(p * z)
        gradient = float(races.won @ z - race_won @ mean_z)
        curvature = float(race_won @ (races.sum(p * z * z) - mean_z**2))
        if curvature <= 1e-12:
            break
        step = gradient / curvature
        weight += step
        if abs(step) < 1e-10:
            break
    return races.pseudo_r2(races.log_softmax(weight * z)), weight


def within_race_correlation(races: Races, x: Array) -> float:
    """Correlation of the feature with winning after removing each race's mean of both."""
    xc = x - (races.sum(x) / races.sizes)[races.index]
    yc = races.won - (races.sum(races.won) / races.sizes)[races.index]
    denominator = float(np.sqrt((xc @ xc) * (yc @ yc)))
    return float(xc @ yc) / denominator if denominator > 0 else 0.0


def feature_report(hkjc_dir: Path, until: date) -> dict[str, object]:
    data = load_hkjc(hkjc_dir)
    state = FeatureState.from_hkjc(data)
    cards = cards_from_entries(data.entries).filter(pl.col("race_date") <= until)
    frame = compute_features(cards, state.states, coverage=True)
    outcomes = data.entries.select("race_id", "runner_id", "won", "win_odds")
    frame = frame.join(outcomes, on=["race_id", "runner_id"], how="left").sort(
        "race_date", "race_no", "race_id", "runner_id"
    )
    races = Races(frame["race_id"].to_numpy(), frame["won"].to_numpy().astype(np.float64))
    inverse_odds = 1.0 / frame["win_odds"].to_numpy()
    market = np.log(inverse_odds / races.sum(inverse_odds)[races.index])
    rows = []
    for group, names in FEATURE_GROUPS.items():
        for name in names:
            x = frame[name].to_numpy().astype(np.float64)
            r2, weight = single_feature_r2(races, x)
            rows.append(
                {
                    "group": group,
                    "feature": name,
                    "coverage": float(frame[f"covered__{name}"].mean() or 0.0),
                    "r2_alone": r2,
                    "direction": "+" if weight > 0 else "-",
                    "within_race_corr": within_race_correlation(races, x),
                    "definition": FEATURE_DESCRIPTIONS[name],
                }
            )
    return {
        "period": [str(frame["race_date"].min()), str(until)],
        "races": int(races.starts.size),
        "runners": frame.height,
        "market_r2": races.pseudo_r2(market),
        "features": rows,
        "load_report": data.report.as_dict(),
    }


def as_markdown(report: dict[str, object]) -> str:
    lines = [
        f"Period {report['period'][0]} .. {report['period'][1]}: {report['races']} races, "  # type: ignore[index]
        f"{report['runners']} runners; market (1/odds) pseudo-R² {report['market_r2']:.4f}.",
        "",
        "| group | feature | coverage | R² alone | sign | within-race corr | definition |",
        "|---|---|---:|---:|:-:|---:|---|",
    ]
    for row in report["features"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {row['group']} | `{row['feature']}` | {row['coverage']:.1%} | "
            f"{row['r2_alone']:.4f} | {row['direction']} | {row['within_race_corr']:+.3f} | "
            f"{row['definition']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hkjc", type=Path, required=True, help="HKJC data directory")
    parser.add_argument("--until", type=date.fromisoformat, default=date(2021, 12, 31))
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args(argv)
    report = feature_report(args.hkjc, args.until)
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(as_markdown(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
