#!/usr/bin/env bash
# Every model number of docs/model.md from the HKJC files, in one run (about 30 minutes):
# train on seasons before 2023-09 (choices on 2021-09 … 2023-08), evaluate that version once on
# the test seasons with the ablation, and walk forward over 2018-09 … 2023-08, the seasons the
# choices were made on. Writes train.json, test.json, walk-forward.json, the report and the
# model into OUT; the registry and its promoted version are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
HKJC=${1:?usage: scripts/reproduce-model.sh HKJC_DIR [OUT]}
OUT=${2:-.data/model-run}
VELO=.venv/bin/velo
rm -rf "$OUT/model" && mkdir -p "$OUT"
$VELO train --hkjc "$HKJC" --train-until 2021-08-31 --valid-until 2023-08-31 \
    --out "$OUT/model" --json > "$OUT/train.json"
$VELO evaluate --hkjc "$HKJC" --model "$OUT/model" --from 2023-09-01 --to 2025-08-31 \
    --ablation --report "$OUT/report" --json > "$OUT/test.json"
$VELO walk-forward --hkjc "$HKJC" --model "$OUT/model" --from 2018-09-01 --until 2023-08-31 \
    --ablation --json > "$OUT/walk-forward.json"
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
test = json.loads((out / "test.json").read_text())
walk = json.loads((out / "walk-forward.json").read_text())
print(f"version {test['model_version']}: test {test['from']} … {test['to']}, {test['races']} races")
for key in ("market_r2", "market_recalibrated_r2", "fundamental_r2", "combined_r2", "delta_r2",
            "delta_r2_vs_recalibrated", "auc", "roi"):
    print(f"  {key:26s} {test[key]:+.5f}")
print(f"walk-forward gain over the recalibrated market {walk['mean_gain']:+.5f} "
      f"± {walk['se_gain']:.5f}, fundamental R² {walk['mean_fundamental_r2']:.4f}")
print(f"report: {test['report']}")
PY
