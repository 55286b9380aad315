"""`velo demo`: the full market dataflow on simulated races into the embedded PostgreSQL.

Needs no services and no outside data: the market simulator writes a deterministic day of
WIN markets from a seed and their racecards, `velo replay` machinery ingests them (scoring
each race with the promoted model, if there is one), and a readable report is read back from
the database.
"""

from __future__ import annotations

import argparse
import re

import psycopg
from rich.console import Console
from rich.table import Table

from cli.options import add_database_option
from cli.replay import print_summary, replay
from cli.runtime import tune_gc_for_streaming
from cli.scoring import TRAIN_HINT, ScorerUnavailableError, load_scorer
from connectors.database import resolve_database_url
from connectors.racecards_sample import racecard_event
from connectors.settings import get_settings
from connectors.simulator import simulate_races, write_stream
from operators.racing_events import dump_event

MARKET_REPORT_SQL = """
select m.market_id, m.venue, m.name, m.market_time, m.status,
       (select count(*) from runners r
         where r.market_id = m.market_id and r.status <> 'REMOVED') as starters,
       (select count(*) from runners r
         where r.market_id = m.market_id and r.status = 'REMOVED') as non_runners,
       (select coalesce(r.name, r.selection_id::text) from results res
          join runners r using (market_id, selection_id, handicap)
         where res.market_id = m.market_id and res.status = 'WINNER' limit 1) as winner,
       (select res.bsp from results res
         where res.market_id = m.market_id and res.status = 'WINNER' limit 1) as winner_bsp,
       (select max(t.total_matched) from market_ticks t where t.market_id = m.market_id) as matched,
       (select min(w.price_move_ticks) from window_aggregates w
         where w.market_id = m.market_id and w.window_secs = 10 and w.selection_id <> 0
           and w.traded_volume > 0 and w.window_end <= m.market_time) as steam_ticks,
       (select count(*) from runner_ticks t where t.market_id = m.market_id) as ticks
  from markets m
 where m.market_id = any(%s)
 order by m.market_time, m.market_id
"""

FAVOURITE_SQL = """
with last as (
    select market_id, max(publish_time) as publish_time, count(distinct publish_time) as moments
      from predictions
     where market_id = any(%(markets)s) and model_version = %(version)s
     group by market_id
)
select distinct on (m.market_time, p.market_id)
       p.market_id, m.venue, m.market_time, l.moments, l.publish_time,
       coalesce(r.name, p.selection_id::text), p.market_probability, p.win_probability,
       (select res.status from results res
         where res.market_id = p.market_id and res.selection_id = p.selection_id limit 1)
  from last l
  join predictions p using (market_id, publish_time)
  join markets m on m.market_id = p.market_id
  left join runners r on r.market_id = p.market_id and r.selection_id = p.selection_id
 where p.model_version = %(version)s
 order by m.market_time, p.market_id, p.market_probability desc
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the market dataflow on simulated races into the embedded PostgreSQL",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=7, help="simulator seed (same seed, same day)")
    parser.add_argument("--markets", type=int, default=8, help="races to simulate")
    parser.add_argument("-w", "--workers", type=int, default=2, help="Bytewax worker threads")
    add_database_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    tune_gc_for_streaming()
    console = Console(width=None if Console().is_terminal else 120)
    demo_dir = get_settings().velo_data_dir / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    stream_path = demo_dir / f"simulated-seed{args.seed}-{args.markets}markets.jsonl.gz"
    write_stream(stream_path, seed=args.seed, markets=args.markets)
    racecards_path = demo_dir / f"racecards-seed{args.seed}-{args.markets}markets.jsonl"
    with racecards_path.open("wb") as out:
        for race in simulate_races(args.seed, args.markets):
            out.write(dump_event(racecard_event(race.racecard)) + b"\n")
    console.print(f"[bold]VÉLØ Oracle demo[/bold] · simulated stream: {stream_path}")
    console.print(f"racecards: {racecards_path}")
    try:
        scorer = load_scorer(None, console)
    except ScorerUnavailableError as error:
        console.print(f"not scoring races: {error}")
        scorer = None
    database_url = resolve_database_url(args.db)
    console.print(f"database: {_redact(database_url)}")
    summary = replay(
        [stream_path],
        database_url,
        workers=args.workers,
        progress=console.is_terminal,
        console=console,
        racecards=racecards_path if scorer is not None else None,
        scorer=scorer,
    )
    print_summary(summary, console)
    _print_markets(database_url, sorted(summary.markets), console)
    if scorer is None:
        console.print(f"no model promoted, so races were not scored; train one with: {TRAIN_HINT}")
    else:
        _print_favourites(database_url, sorted(summary.markets), scorer.version, console)
    return 0 if summary.messages else 1


def _print_markets(database_url: str, market_ids: list[str], console: Console) -> None:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(MARKET_REPORT_SQL, (market_ids,)).fetchall()
    table = Table(title="markets")
    columns = (
        "market",
        "race",
        "off",
        "status",
        "ran",
        "NR",
        "winner",
        "BSP",
        "matched £",
        "steam¹",
        "ticks",
    )
    for column in columns:
        table.add_column(column, no_wrap=column not in ("race", "winner"))
    for row in rows:
        (
            market_id,
            venue,
            name,
            market_time,
            status,
            starters,
            non_runners,
            winner,
            winner_bsp,
            matched,
            steam,
            ticks,
        ) = row
        table.add_row(
            market_id,
            f"{venue or ''} {name or ''}".strip(),
            market_time.strftime("%H:%M") if market_time else "-",
            status,
            str(starters),
            str(non_runners),
            winner or "-",
            f"{winner_bsp:g}" if winner_bsp else "-",
            f"{matched or 0:,.0f}",
            str(steam) if steam is not None else "-",
            f"{ticks:,}",
        )
    console.print(table)
    console.print("¹ steepest pre-off shortening of any runner within a 10 s window, in ticks")


def _print_favourites(
    database_url: str, market_ids: list[str], version: str, console: Console
) -> None:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(FAVOURITE_SQL, {"markets": market_ids, "version": version}).fetchall()
    table = Table(title=f"favourite at the last pre-off score · model {version}")
    for column in ("market", "venue", "off", "scores", "last score", "favourite", "market %"):
        table.add_column(column, no_wrap=True)
    table.add_column("model %", no_wrap=True)
    table.add_column("result", no_wrap=True)
    for (
        market_id,
        venue,
        market_time,
        moments,
        scored_at,
        favourite,
        market_probability,
        model_probability,
        result,
    ) in rows:
        table.add_row(
            market_id,
            venue or "",
            market_time.strftime("%H:%M") if market_time else "-",
            str(moments),
            scored_at.strftime("%H:%M:%S"),
            favourite,
            f"{100 * market_probability:.1f}",
            f"{100 * model_probability:.1f}",
            (result or "-").lower(),
        )
    console.print(table)


def _redact(url: str) -> str:
    """Hide a password in a URL before printing it."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)
