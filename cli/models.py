"""`velo train`, `velo evaluate` and `velo models list|show|promote`: the Oracle model's CLI."""

from __future__ import annotations

import argparse
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from models.search_space import COMBINATION_SOURCES, L2_GRID, PLACE_WEIGHTS, VARIANTS

if TYPE_CHECKING:
    from models.registry import ModelVersion
    from models.walk_forward import WalkForwardSettings

EXIT_BAD_INPUT = 2


def _print_json(document: Any) -> None:
    sys.stdout.write(
        orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()
        + "\n"
    )


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _train(args: argparse.Namespace) -> int:
    from models.pipeline import (
        default_valid_until,
        feature_groups,
        load_race_set,
        train_and_save,
    )
    from models.registry import default_root, promote

    valid_until = args.valid_until or default_valid_until(args.train_until)
    root = args.root or default_root()
    try:
        _note(f"building point-in-time features from {args.hkjc} ...")
        data = load_race_set(args.hkjc)
        _note(
            f"{data.n_races} usable races; dropped {data.dropped or 'none'}; training on "
            f"≤ {args.train_until}, validating on ({args.train_until}, {valid_until}]"
        )
        version = train_and_save(
            data,
            args.train_until,
            valid_until,
            args.out,
            root,
            source=str(args.hkjc),
            groups=feature_groups(),
            l2_grid=tuple(args.l2_grid),
            variants=tuple(args.variants),
            place_weights=tuple(args.place_weights),
        )
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        _note(f"velo train: {exc}")
        return EXIT_BAD_INPUT
    if args.promote:
        promote(version.path.parent, version.version)
    validation = version.metadata["metrics"]["validation"]
    summary = {
        "version": version.version,
        "path": str(version.path),
        "stage1": {
            key: version.metadata["stage1"][key]
            for key in ("variant", "fundamental_l2", "combination_source", "combination_l2")
        },
        "stage2": version.metadata["stage2"],
        "online_kept": version.metadata["online"]["kept"],
        "validation": {
            key: validation[key]
            for key in (
                "races",
                "market_r2",
                "market_recalibrated_r2",
                "fundamental_r2",
                "combined_r2",
                "delta_r2",
            )
        },
    }
    if args.json:
        _print_json(summary)
    else:
        _note(f"saved model {version.version} to {version.path}")
        for key, value in summary["validation"].items():
            print(f"validation {key}: {value}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from models.pipeline import load_race_set, run_evaluation
    from models.registry import load_version, resolve_model_dir
    from models.report import write_report

    try:
        version = load_version(resolve_model_dir(args.model, args.root))
        data = load_race_set(args.hkjc, version.model.feature_names)
        run = run_evaluation(version, data, args.date_from, args.date_to, args.ablation)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _note(f"velo evaluate: {exc}")
        return EXIT_BAD_INPUT
    to_label = args.date_to.isoformat() if args.date_to else "end"
    report_dir = args.report or version.path / f"report_{args.date_from.isoformat()}_{to_label}"
    report = write_report(run, version, report_dir)
    run.summary["report"] = str(report)
    if run.summary["overlaps_fitting_period"]:
        _note("warning: the evaluation window overlaps the model's training/validation period")
    if args.json:
        _print_json(run.summary)
    else:
        for key in (
            "races",
            "market_r2",
            "market_recalibrated_r2",
            "fundamental_r2",
            "combined_r2",
            "delta_r2",
            "log_loss_market",
            "log_loss_combined",
            "auc",
            "roi",
        ):
            print(f"{key}: {run.summary[key]}")
        print(f"report: {report}")
    return 0


def _walk_forward_settings(
    args: argparse.Namespace,
) -> tuple[WalkForwardSettings, ModelVersion | None]:
    """Stage-1 settings: the given options over those of `--model` (default: the promoted one).

    Returns (settings, version or None). Without a model, every option but `--place-weights`
    (default: those `velo train` uses) must be given.
    """
    from models.registry import load_version, resolve_model_dir
    from models.walk_forward import WalkForwardSettings

    given = {
        "variant": args.variant,
        "fundamental_l2": args.fundamental_l2,
        "combination_source": args.combination_source,
        "combination_l2": args.combination_l2,
    }
    version = None
    needs_model = args.model is not None or None in given.values()
    given["place_weights"] = None if args.place_weights is None else tuple(args.place_weights)
    if needs_model:
        try:
            version = load_version(resolve_model_dir(args.model, args.root))
        except FileNotFoundError as exc:
            raise ValueError(
                f"{exc}; give --variant, --fundamental-l2, --combination-source and "
                "--combination-l2, or a trained --model"
            ) from None
        defaults = vars(WalkForwardSettings.of_version(version))
        given = {key: defaults[key] if value is None else value for key, value in given.items()}
    return WalkForwardSettings(**{k: v for k, v in given.items() if v is not None}), version


def _walk_forward(args: argparse.Namespace) -> int:
    from models.pipeline import feature_groups, load_race_set
    from models.walk_forward import seasons, walk_forward, walk_forward_ablation

    try:
        settings, version = _walk_forward_settings(args)
        windows = seasons(args.date_from - timedelta(days=1), args.until)
        data = load_race_set(args.hkjc, version.model.feature_names if version else None)
        _note(f"walking {len(windows)} seasons forward with {settings} ...")
        result = walk_forward(data, windows, settings)
        if args.ablation:
            groups = version.metadata["feature_groups"] if version else feature_groups()
            result["ablation"] = walk_forward_ablation(data, windows, settings, groups)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _note(f"velo walk-forward: {exc}")
        return EXIT_BAD_INPUT
    if version is not None:
        result["model_version"] = version.version
        valid_until = date.fromisoformat(version.metadata["data_window"]["valid_until"])
        result["reaches_past_validation"] = args.until > valid_until
        if result["reaches_past_validation"]:
            _note(f"warning: the walk reaches past {valid_until}, the model's test seasons")
    if args.json:
        _print_json(result)
        return 0
    print("season                   races  market  recal.  fundam.  combined  gain")
    for row in result["seasons"]:
        print(
            f"{row['from']} … {row['to']}  {row['races']:5d}  {row['market_r2']:.4f}  "
            f"{row['market_recalibrated_r2']:.4f}  {row['fundamental_r2']:.4f}   "
            f"{row['combined_r2']:.4f}    {row['gain']:+.4f}"
        )
    print(
        f"gain over the recalibrated market {result['mean_gain']:+.5f} ± {result['se_gain']:.5f} "
        f"({result['seasons_with_gain']}/{len(result['seasons'])} seasons); "
        f"fundamental R² {result['mean_fundamental_r2']:.4f}"
    )
    for row in result.get("ablation", []):
        print(
            f"{row['group']}: without gain {row.get('without_mean_gain', float('nan')):+.5f} "
            f"fundamental {row.get('without_mean_fundamental_r2', float('nan')):.4f}; alone gain "
            f"{row.get('alone_mean_gain', float('nan')):+.5f} "
            f"fundamental {row.get('alone_mean_fundamental_r2', float('nan')):.4f}"
        )
    return 0


def _list(args: argparse.Namespace) -> int:
    from models.registry import default_root, list_versions

    versions = list_versions(args.root or default_root())
    if args.json:
        _print_json(versions)
        return 0
    if not versions:
        print("no model versions")
    for item in versions:
        marker = "*" if item["promoted"] else " "
        print(
            f"{marker} {item['version']}  created {item['created_at']}  "
            f"train≤{item['train_until']} valid≤{item['valid_until']}  "
            f"valid ΔR² {item['valid_delta_r2']}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    from models.registry import load_version, resolve_model_dir

    try:
        version = load_version(resolve_model_dir(args.version, args.root))
    except (ValueError, FileNotFoundError) as exc:
        _note(f"velo models show: {exc}")
        return EXIT_BAD_INPUT
    _print_json({"path": str(version.path), **version.metadata})
    return 0


def _promote(args: argparse.Namespace) -> int:
    from models.registry import default_root, promote

    root = args.root or default_root()
    try:
        path = promote(root, args.version)
    except (ValueError, FileNotFoundError) as exc:
        _note(f"velo models promote: {exc}")
        return EXIT_BAD_INPUT
    print(f"promoted {args.version} ({path})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    root_help = "registry root (default $VELO_DATA_DIR/models)"

    train = subparsers.add_parser("train", help="Fit the Benter two-stage model on HKJC data.")
    train.add_argument("--hkjc", type=Path, required=True, help="HKJC data directory")
    train.add_argument("--train-until", type=date.fromisoformat, required=True)
    train.add_argument(
        "--valid-until",
        type=date.fromisoformat,
        default=None,
        help="end of the validation period (default: train-until + 730 days)",
    )
    train.add_argument("--out", type=Path, default=None, help="model version directory to write")
    train.add_argument(
        "--variants",
        nargs="+",
        choices=tuple(VARIANTS),
        default=tuple(VARIANTS),
        help="design variants to search (models/design.py)",
    )
    train.add_argument(
        "--l2-grid",
        nargs="+",
        type=float,
        default=L2_GRID,
        help="L2 strengths to search (stage 1)",
    )
    train.add_argument(
        "--place-weights",
        nargs="+",
        type=float,
        default=PLACE_WEIGHTS,
        help="stage-1 weights of the win, 2nd, 3rd ... place (one value: the win alone)",
    )
    train.add_argument("--root", type=Path, default=None, help=root_help)
    train.add_argument("--promote", action="store_true", help="promote the new version")
    train.add_argument("--json", action="store_true", help="print a JSON summary")
    train.set_defaults(func=_train)

    evaluate = subparsers.add_parser(
        "evaluate", help="Out-of-sample evaluation of a model version, with a report."
    )
    evaluate.add_argument("--hkjc", type=Path, required=True, help="HKJC data directory")
    evaluate.add_argument(
        "--model", default=None, help="model directory or version (default: the promoted one)"
    )
    evaluate.add_argument("--root", type=Path, default=None, help=root_help)
    evaluate.add_argument("--from", dest="date_from", type=date.fromisoformat, required=True)
    evaluate.add_argument("--to", dest="date_to", type=date.fromisoformat, default=None)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument(
        "--report", type=Path, default=None, help="report directory (default: next to the model)"
    )
    evaluate.add_argument(
        "--ablation", action="store_true", help="retrain without each feature group"
    )
    evaluate.set_defaults(func=_evaluate)

    walk = subparsers.add_parser(
        "walk-forward",
        help="Per-season gain over the market, stage 1 refitted before each season.",
    )
    walk.add_argument("--hkjc", type=Path, required=True, help="HKJC data directory")
    walk.add_argument(
        "--from", dest="date_from", type=date.fromisoformat, required=True, help="first season"
    )
    walk.add_argument("--until", type=date.fromisoformat, required=True, help="last season's end")
    walk.add_argument(
        "--model",
        default=None,
        help="take the stage-1 settings of this version (default: promoted)",
    )
    walk.add_argument("--root", type=Path, default=None, help=root_help)
    walk.add_argument("--variant", choices=sorted(VARIANTS), default=None)
    walk.add_argument("--fundamental-l2", type=float, default=None)
    walk.add_argument("--combination-source", choices=COMBINATION_SOURCES, default=None)
    walk.add_argument("--combination-l2", type=float, default=None)
    walk.add_argument("--place-weights", nargs="+", type=float, default=None)
    walk.add_argument("--ablation", action="store_true", help="also without / with only each group")
    walk.add_argument("--json", action="store_true", help="print one JSON object")
    walk.set_defaults(func=_walk_forward)

    models = subparsers.add_parser("models", help="List, show and promote model versions.")
    actions = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="List model versions.")
    listing.add_argument("--root", type=Path, default=None, help=root_help)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_list)
    show = actions.add_parser("show", help="Print a version's metadata as JSON.")
    show.add_argument("version", nargs="?", default=None, help="version or directory")
    show.add_argument("--root", type=Path, default=None, help=root_help)
    show.set_defaults(func=_show)
    promote = actions.add_parser("promote", help="Make a version the one live scoring uses.")
    promote.add_argument("version")
    promote.add_argument("--root", type=Path, default=None, help=root_help)
    promote.set_defaults(func=_promote)
