#!/usr/bin/env bash
# The study of the paper's three claims (docs/results/README.md): every sweep, the
# three reports and the extra analysis, one after the other, from the repository root.
#
#   bash docs/results/run_study.sh                 # sweeps under /tmp/study_runs
#   SELREL_STUDY_RUNS=sweeps/study bash docs/results/run_study.sh
#
# The sweep tables (Parquet, ~MBs) go to $SELREL_STUDY_RUNS and are not committed; the
# reports, their PNGs and analysis.md are written into docs/results/. Use a fresh
# $SELREL_STUDY_RUNS for a timing: a finished sweep is not recomputed (rerunning resumes).
# Wall time of each step and in all: $SELREL_STUDY_RUNS/times.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${SELREL_STUDY_RUNS:-/tmp/study_runs}
OUT=docs/results
CLIPS=72          # clips per sweep (a multiple of 6: balanced classes)
SEED=12345        # --data-seed: fresh procedural test clips, no dataset cache
METHODS=gradient_x_input,integrated_gradients,grad_cam,lrp.epsilon_plus_flat,lrp.epsilon_gamma_box
mkdir -p "$RUNS/logs"
TIMES="$RUNS/times.txt"
echo "start $(date -u +%FT%TZ) $(uptime)" >>"$TIMES"
START=$(date +%s)

step() {  # step NAME COMMAND...: run it, log stderr, record its wall time
    local name=$1 t0
    shift
    t0=$(date +%s)
    "$@" 2>"$RUNS/logs/$name.log" | tee -a "$RUNS/logs/results.jsonl"
    echo "$name $(($(date +%s) - t0)) s; load: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$TIMES"
}

sweep() {  # sweep NAME CONFIG MODEL [extra flags]: all methods and sigmas, target predicted
    local name=$1 config=$2 model=$3
    shift 3
    step "$name" selrel sweep --dataset "synthetic_motion$config" --split test \
        --data-seed "$SEED" --limit "$CLIPS" --model "$model" --target predicted \
        --methods "$METHODS" --sigmas 0.5,1,2,3 --no-progress --out "$RUNS/$name" "$@"
}

# Claim 1 where appearance and motion are apart: the distractors test split.
sweep distractors-motion /distractors c3d_small_motion
sweep distractors-biased /distractors c3d_small_biased
sweep distractors-distractors /distractors c3d_small_distractors
# Claims 1-3 on each model's own test split (default for the first pair).
sweep default-motion "" c3d_small_motion
sweep default-biased "" c3d_small_biased
sweep biased_still-biased_still /biased_still c3d_small_biased_still

# Motion reliance (frame freezing) of the same clips. --faithfulness also computes the
# deletion/insertion AUCs (22 model runs per map), so these use the cheapest method and
# one sigma; analysis.py joins the reliance to every method's spatial bias by clip_id.
reliance() {  # reliance NAME CONFIG MODEL
    step "reliance-$1" selrel sweep --dataset "synthetic_motion$2" --split test \
        --data-seed "$SEED" --limit "$CLIPS" --model "$3" --target predicted \
        --methods grad_cam --sigmas 1 --faithfulness --no-progress --out "$RUNS/reliance-$1"
}
reliance default-motion "" c3d_small_motion
reliance default-biased "" c3d_small_biased
reliance biased_still-biased_still /biased_still c3d_small_biased_still

step report-distractors selrel report "$RUNS"/distractors-{motion,biased,distractors} \
    --out "$OUT/distractors.md"
step report-own-split selrel report "$RUNS"/default-{motion,biased} \
    "$RUNS/biased_still-biased_still" --out "$OUT/own_split.md"
step report-reliance selrel report "$RUNS"/reliance-{default-motion,default-biased} \
    "$RUNS/reliance-biased_still-biased_still" --out "$OUT/reliance.md"
step analysis python "$OUT/analysis.py" "$RUNS" --out "$OUT/analysis.md"

echo "total $(($(date +%s) - START)) s; end $(date -u +%FT%TZ) $(uptime)" >>"$TIMES"
cat "$TIMES"
