"""Evaluation report: Markdown with PNG charts (calibration, bankroll), plus the metrics JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from matplotlib.figure import Figure

from models.evaluation import BENTER_1994
from models.pipeline import EvaluationRun
from models.registry import ModelVersion

MODELS = (
    ("Market (1/odds normalised)", "market"),
    ("Market recalibrated (π^β, α = 0)", "market_recalibrated"),
    ("Fundamental (stage 1)", "fundamental"),
    ("Combined (stage 2)", "combined"),
)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _calibration_chart(run: EvaluationRun, path: Path) -> None:
    figure = Figure(figsize=(6, 6))
    axes = figure.add_subplot()
    axes.plot([0, 0.7], [0, 0.7], color="grey", linestyle="--", linewidth=1, label="perfect")
    for name, table in run.evaluation.calibration.items():
        axes.plot(
            [b.mean_predicted for b in table],
            [b.observed_win_rate for b in table],
            marker="o",
            label=name,
        )
    axes.set_xlabel("mean predicted win probability")
    axes.set_ylabel("observed win rate")
    axes.set_title("Calibration")
    axes.legend()
    figure.savefig(path, dpi=110, bbox_inches="tight")


def _bankroll_chart(run: EvaluationRun, path: Path) -> None:
    figure = Figure(figsize=(8, 4))
    axes = figure.add_subplot()
    axes.plot(run.evaluation.race_dates, run.evaluation.betting.bankroll_curve, linewidth=1)
    axes.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    axes.set_yscale("log")
    axes.set_ylabel("bankroll (start = 1, log scale)")
    axes.set_title(f"Fractional Kelly ({run.evaluation.betting.kelly_fraction}) on combined edge")
    figure.autofmt_xdate()
    figure.savefig(path, dpi=110, bbox_inches="tight")


def write_report(run: EvaluationRun, version: ModelVersion, out_dir: Path) -> Path:
    """Write report.md, calibration.png, bankroll.png and metrics.json into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _calibration_chart(run, out_dir / "calibration.png")
    _bankroll_chart(run, out_dir / "bankroll.png")
    (out_dir / "metrics.json").write_bytes(
        orjson.dumps(run.summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    m = run.summary
    meta = version.metadata
    window = meta["data_window"]
    lines = [
        f"# VÉLØ Oracle model evaluation — version `{version.version}`",
        "",
        f"Evaluation window: {m['from']} to {m['to'] or 'end of data'} "
        f"(races actually present: {m['window'][0]} … {m['window'][1]}), "
        f"**{m['races']} races**, {m['runners']} runners.",
        f"Trained on races up to {window['train_until']} ({window['train_races']} races); "
        f"stage 2 and L2 chosen on ({window['train_until']}, {window['valid_until']}] "
        f"({window['valid_races']} races).",
    ]
    if m["overlaps_fitting_period"]:
        lines.append("")
        lines.append("**Warning: this window overlaps the fitting period; not out of sample.**")
    if m["feature_code_changed"]:
        lines.append("")
        lines.append("**Warning: the feature code changed since this model was trained.**")
    lines += [
        "",
        "## Log loss and Benter pseudo-R²",
        "",
        "Pseudo-R² = 1 − logL(model)/logL(uniform), over each race's winner.",
        "",
        "| model | log loss | pseudo-R² | AUC | top-pick win rate |",
        "|---|---|---|---|---|",
        f"| Uniform (1/n) | {_fmt(m['log_loss_uniform'])} | 0 | 0.5 | – |",
    ]
    for label, key in MODELS:
        lines.append(
            f"| {label} | {_fmt(m[f'log_loss_{key}'])} | {_fmt(m[f'{key}_r2'])} | "
            f"{_fmt(m[f'auc_{key}'])} | {_fmt(m[f'top_pick_win_rate_{key}'])} |"
        )
    if "log_loss_online" in m:
        lines.append(
            f"| Combined + online (River) | {_fmt(m['log_loss_online'])} | "
            f"{_fmt(m['online_r2'])} | – | – |"
        )
    lines += [
        "",
        f"ΔR² (combined − raw market) = **{_fmt(m['delta_r2'], 5)}**; "
        f"combined − recalibrated market = **{_fmt(m['delta_r2_vs_recalibrated'], 5)}**.",
        "",
        "| | public (market) R² | fundamental R² | combined R² |",
        "|---|---|---|---|",
        f"| This model, {m['window'][0]} … {m['window'][1]} | {_fmt(m['market_r2'])} | "
        f"{_fmt(m['fundamental_r2'])} | {_fmt(m['combined_r2'])} |",
        f"| Benter (1994), Hong Kong 1986–93 | {BENTER_1994['market_r2']} | "
        f"{BENTER_1994['fundamental_r2']} | {BENTER_1994['combined_r2']} |",
        "",
        f"Stage 1: design `{meta['stage1']['variant']}`; fundamental model L2 = "
        f"{meta['stage1']['fundamental_l2']}; the combination uses the "
        f"`{meta['stage1']['combination_source']}` stage-1 model (L2 = "
        f"{meta['stage1']['combination_l2']}); both refitted on the races up to "
        f"{meta['stage1'].get('fitted_until', meta['data_window']['train_until'])}. "
        f"Stage 2: α = {_fmt(meta['stage2']['alpha'])}, β = {_fmt(meta['stage2']['beta'])}; "
        f"recalibrated market β = {_fmt(meta['stage2']['market_beta'])} "
        "(β ≠ 1 is the favourite–longshot correction; β > 1: longshots are over-bet).",
        "",
        "## Calibration",
        "",
        "![calibration](calibration.png)",
        "",
        "| model | bin | runners | mean predicted | observed |",
        "|---|---|---|---|---|",
    ]
    for name, table in run.evaluation.calibration.items():
        for b in table:
            lines.append(
                f"| {name} | [{b.low:.2f}, {b.high:.2f}) | {b.runners} | "
                f"{b.mean_predicted:.4f} | {b.observed_win_rate:.4f} |"
            )
    bet = run.evaluation.betting
    lines += [
        "",
        "## Betting simulation",
        "",
        f"Fractional Kelly ({bet.kelly_fraction} × Kelly) on every runner whose combined-model "
        f"expected return at the final odds exceeds {bet.min_edge:.0%}, at most "
        f"{bet.max_race_fraction:.0%} of the bankroll per race, races settled in time order. "
        "The HKJC win-pool takeout (17.5%) is already in the odds; our own bets' effect on the "
        "pool is ignored.",
        "",
        "| races | races bet | bets | turnover (× start bank) | profit | ROI | final bankroll "
        "| max drawdown | flat-stake ROI |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {bet.races} | {bet.races_bet} | {bet.bets} | {bet.turnover:.4g} | {bet.profit:.4g} | "
        f"{bet.roi:.2%} | {bet.final_bankroll:.4g} | {bet.max_drawdown:.1%} | "
        f"{bet.flat_stake_roi:.2%} |",
        "",
        "![bankroll](bankroll.png)",
    ]
    if run.ablation:
        lines += [
            "",
            "## Ablation (both stages retrained, same windows, design, source and L2s)",
            "",
            "| group | features | fundamental R² without | ΔR² without | loss of fundamental R² "
            "| loss of ΔR² | fundamental R² alone | ΔR² alone |",
            "|---|---|---|---|---|---|---|---|",
            f"| (all features) | {len(meta['feature_names'])} | {_fmt(m['fundamental_r2'])} | "
            f"{_fmt(m['delta_r2'], 5)} | – | – | – | – |",
        ]
        for row in run.ablation:
            lines.append(
                f"| {row['group']} | {row['features']} | "
                f"{_fmt(row.get('without_fundamental_r2'))} | "
                f"{_fmt(row.get('without_delta_r2'), 5)} | "
                f"{_fmt(row.get('fundamental_r2_loss'))} | {_fmt(row.get('delta_r2_loss'), 5)} | "
                f"{_fmt(row.get('alone_fundamental_r2'))} | {_fmt(row.get('alone_delta_r2'), 5)} |"
            )
    online = meta.get("online")
    if online:
        lines += [
            "",
            "## Online component (River)",
            "",
            f"Progressive validation over {online['races']} races: frozen log loss "
            f"{_fmt(online['valid_log_loss_frozen'], 5)}, online "
            f"{_fmt(online['valid_log_loss_online'], 5)} (improvement "
            f"{_fmt(online['improvement'], 5)}): **{'kept' if online['kept'] else 'discarded'}**.",
        ]
    lines += [
        "",
        "## Provenance",
        "",
        f"- feature code hash `{meta['feature_code_hash']}`",
        f"- training data hash `{meta['training_data_hash']}`",
        f"- created {meta['created_at']}; data source `{window['source']}`",
        f"- races dropped while loading, by reason: {m['dropped_races'] or 'none'}",
        "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
