#!/usr/bin/env bash
# make demo: a complete transfer-learning study on the bundled synthetic sample, offline, on CPU.
# tu-efficientnet_lite0 with ImageNet weights frozen, fine-tuned, and from scratch, at one equal budget of
# 5 epochs x 384 crops of 192 px, half of them placed on damage (--damage-crops 0.5; the same crops for all
# three), damage vs clean (artefact-binary labels);
# then evaluate, compare (with the paired bootstrap CI of each difference), predict and report.
# About 10 minutes on 2 quiet CPU cores (README). Re-running skips runs that already finished.
# DEMO_QUICK=1: a smoke test of the whole pipeline in a couple of minutes (2 epochs x 64 crops of 128 px; it
# learns nothing worth reading), in experiments/demo-quick/ and reports/demo-quick-*.html.
set -euo pipefail
cd "$(dirname "$0")/.."
DS=.venv/bin/damage-smp
if [ "${DEMO_QUICK:-0}" = 1 ]; then
  TAG=demo-quick EPOCHS=${DEMO_EPOCHS:-2} SAMPLES=${DEMO_SAMPLES:-64} CROP=${DEMO_CROP:-128}
else
  TAG=demo EPOCHS=${DEMO_EPOCHS:-5} SAMPLES=${DEMO_SAMPLES:-384} CROP=${DEMO_CROP:-192}
fi
EXP=${DEMO_EXPERIMENTS:-experiments/$TAG}
COMMON=(--manifest data_manifest.csv --labels artefact-binary --encoder tu-efficientnet_lite0 --epochs "$EPOCHS"
        --samples-per-epoch "$SAMPLES" --crop-size "$CROP" --batch-size 8 --lr 2e-3 --warmup-iters 20
        --class-weights auto --damage-crops 0.5 --out-dir "$EXP" --seed 0)

finished() { [ -f "$1/state.json" ] && grep -q '"finished"' "$1/state.json"; }

run() {  # name, extra flags...
  local name=$1; shift
  if finished "$EXP/$name"; then echo "== $name: already trained (delete $EXP/$name to retrain)"; return; fi
  local again=(); [ -d "$EXP/$name" ] && again=(--overwrite)   # an unfinished demo run of ours: start it over
  echo "== training $name"
  "$DS" train "${COMMON[@]}" --name "$name" "${again[@]}" "$@"
}

run lite0-imagenet-frozen --encoder-weights imagenet --freeze-encoder
run lite0-imagenet-finetune --encoder-weights imagenet
run lite0-scratch --encoder-weights none

for name in lite0-imagenet-frozen lite0-imagenet-finetune lite0-scratch; do
  echo "== evaluating $name on the test split"
  "$DS" evaluate "$EXP/$name" --split test
done

echo "== comparing"
"$DS" compare "$EXP" --out "$EXP/compare" --overwrite

BEST=$(.venv/bin/python - "$EXP" <<'PY'
import json, math, sys
from pathlib import Path
scores = {}
for run in ("lite0-imagenet-frozen", "lite0-imagenet-finetune", "lite0-scratch"):
    test = json.loads((Path(sys.argv[1]) / run / "metrics.json").read_text())["test"]["summary"]
    score = test.get("damage_miou")
    scores[run] = score if isinstance(score, float) and not math.isnan(score) else -1.0
print(max(scores, key=scores.get))
PY
)
echo "== predicting the test images with the best run by test damage mIoU: $BEST"
.venv/bin/python - <<'PY' > "$EXP/test_images.txt"
import pandas as pd
df = pd.read_csv("data_manifest.csv")
print("\n".join(df.loc[df["split"] == "test", "image"]))
PY
mapfile -t TEST_IMAGES < "$EXP/test_images.txt"
"$DS" predict "$EXP/$BEST" "${TEST_IMAGES[@]}" --out "predictions/$TAG" --tile 512 --overwrite

echo "== reports"
"$DS" report "$EXP" --out "reports/$TAG-study.html" --overwrite
"$DS" report "predictions/$TAG" --out "reports/$TAG-predictions.html" --overwrite

echo
echo "== result (test split; damage mIoU = IoU of the Damage class; Δ and 95% CI against scratch, paired bootstrap)"
.venv/bin/python - "$EXP/compare/compare.csv" <<'PY'
import math, sys
import pandas as pd
df = pd.read_csv(sys.argv[1])
for r in df[df["row_type"] == "run"].itertuples():
    ci = "" if math.isnan(r.ci_low) else f"   Δ {r.delta:+.3f}  95% CI [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
    print(f"  {r.name:<26} damage mIoU {r.damage_miou:.3f}  mIoU {r.miou:.3f}{ci}")
PY
echo
echo "runs:        $EXP/  (config.json, history.csv, checkpoints/, metrics.json, curves.png, samples/)"
echo "comparison:  $EXP/compare/compare.md"
echo "masks:       predictions/$TAG/  (areas.csv, *_mask.png, *_index.png, *_overlay.jpg)"
echo "study page:       $PWD/reports/$TAG-study.html"
echo "predictions page: $PWD/reports/$TAG-predictions.html  (open both in a browser; they work from disk)"
