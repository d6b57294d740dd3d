#!/usr/bin/env bash
# make demo: a complete transfer-learning study on the bundled synthetic sample, offline, on CPU.
# tu-efficientnet_lite0 with ImageNet weights frozen, fine-tuned, and from scratch, at the same budget
# (5 epochs x 192 crops of 128 px: minutes on 2 CPU cores, so a smoke-sized study, not a converged one);
# then evaluate, compare, predict and report. Re-running skips runs that already finished.
set -euo pipefail
cd "$(dirname "$0")/.."
DS=.venv/bin/damage-smp
EXP=${DEMO_EXPERIMENTS:-experiments/demo}
EPOCHS=${DEMO_EPOCHS:-5}
SAMPLES=${DEMO_SAMPLES:-192}
COMMON=(--manifest data_manifest.csv --encoder tu-efficientnet_lite0 --epochs "$EPOCHS"
        --samples-per-epoch "$SAMPLES" --crop-size 128 --batch-size 8 --lr 3e-3 --warmup-iters 10
        --class-weights auto --out-dir "$EXP" --seed 0)

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
"$DS" predict "$EXP/$BEST" "${TEST_IMAGES[@]}" --out predictions/demo --tile 512 --overwrite

echo "== reports"
"$DS" report "$EXP" --out reports/demo-study.html --overwrite
"$DS" report predictions/demo --out reports/demo-predictions.html --overwrite

echo
echo "runs:        $EXP/  (config.json, history.csv, checkpoints/, metrics.json, curves.png, samples/)"
echo "comparison:  $EXP/compare/compare.md"
echo "masks:       predictions/demo/  (areas.csv, *_mask.png, *_index.png, *_overlay.jpg)"
echo "reports:     reports/demo-study.html  reports/demo-predictions.html"
