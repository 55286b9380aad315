"""BOP (bias / positioning): draw, draw bias of the course and distance from earlier races,
and how the horse's running style suits the draw and the track."""

from __future__ import annotations

import polars as pl

from models.features._common import any_known, known

# Pseudo-runs at zero bias per draw key. A draw's true edge is small next to the noise of one
# run (win excess sd ~0.27), so few runs must say little: walk-forward on 2018/19-2022/23 the
# gain over the recalibrated market rose in every season from 50 to 150 to 400 runs, then
# flattened (+0.0002 at 400 against 50).
DRAW_PRIOR_RUNS = 400.0
PACE_PRIOR_RUNS = 30.0

FEATURES = {
    "draw_pct": "Barrier draw scaled 0 (inside) .. 1 (widest) by field size.",
    "draw_bias_win": "Earlier wins above 1/field from this draw at venue/course/distance, shrunk.",
    "draw_bias_finish": "Earlier finish above mid-field from this draw there, shrunk.",
    "style_draw": "Front-running tendency x draw_pct (a leader drawn wide must cross).",
    "leader_bias_fit": "How early leaders have fared there x the horse's front-running tendency.",
    "draw_field": "draw_pct x field size / 14: a wide draw costs more in a big field.",
}


_EARLY = any_known("h_early_pct_0", "h_early_pct_1", "h_early_pct_2")
COVERAGE = {
    "draw_pct": known("draw"),
    "draw_bias_win": known("dr_as_of"),
    "draw_bias_finish": known("dr_as_of"),
    "style_draw": known("draw") & _EARLY,
    "leader_bias_fit": known("pc_as_of") & _EARLY,
    "draw_field": known("draw"),
}


def compute(frame: pl.DataFrame) -> pl.DataFrame:
    field = pl.col("field_size").cast(pl.Float64)
    draw_pct = (pl.col("draw").cast(pl.Float64) - 1.0) / (field - 1.0).clip(lower_bound=1.0)
    draw_pct = draw_pct.clip(0.0, 1.0).fill_null(0.5)
    draw_runs = pl.col("dr_runs").fill_null(0.0) + DRAW_PRIOR_RUNS
    front_running = 0.5 - pl.col("early_position_avg_3")
    leader_bias = pl.col("pc_finish_gain").fill_null(0.0) / (
        pl.col("pc_runs").fill_null(0.0) + PACE_PRIOR_RUNS
    )
    return frame.with_columns(
        draw_pct=draw_pct,
        draw_bias_win=pl.col("dr_win_excess").fill_null(0.0) / draw_runs,
        draw_bias_finish=pl.col("dr_finish_gain").fill_null(0.0) / draw_runs,
        style_draw=front_running * draw_pct,
        leader_bias_fit=leader_bias * front_running,
        draw_field=draw_pct * field / 14.0,
    )
