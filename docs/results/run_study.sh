#!/usr/bin/env bash
# The study of the paper's three claims (docs/results/README.md): training of the extra
# seeds, every sweep, the randomisation checks, the reports and the extra analysis, one
# after the other, from the repository root.
#
#   bash docs/results/run_study.sh                 # models and sweeps under /tmp/study_runs
#   SELREL_STUDY_RUNS=sweeps/study bash docs/results/run_study.sh
#   SELREL_STUDY_TRAIN=0 bash docs/results/run_study.sh   # no training: the seeds whose
#                                                 # export is missing are left out
#   SELREL_STUDY_PART=seed0|sanity|seeds|transformer|reports bash docs/results/run_study.sh
#                                                 # (two parts may run at once)
#
# Seed 0 of each condition is the shipped checkpoint; seeds 1 and 2 are trained here
# with the shipped models' recipe (checkpoints/*/info.json) into $RUNS/models/
# c3d_small_<condition>_seed<k> (skipped when the export exists). The sweep tables
# (Parquet, ~MBs) go to $SELREL_STUDY_RUNS and are not committed; the reports, their PNGs
# and analysis.md are written into docs/results/. A finished sweep is not recomputed
# (rerunning resumes), so use a fresh $SELREL_STUDY_RUNS for a timing. Wall time of each
# step and in all: $SELREL_STUDY_RUNS/times.txt.
set -euo pipefail

main() {  # the whole script is one function: bash reads it completely before running it
cd "$(dirname "$0")/../.."
RUNS=${SELREL_STUDY_RUNS:-/tmp/study_runs}
TRAIN=${SELREL_STUDY_TRAIN:-1}
PART=${SELREL_STUDY_PART:-all}
OUT=docs/results
CLIPS=72          # clips per seed-0 sweep (a multiple of 6: balanced classes)
SEED=12345        # --data-seed: fresh procedural test clips, no dataset cache
BASELINES=baseline.random,baseline.frame_difference,baseline.input_sobel
METHODS=gradient_x_input,integrated_gradients,grad_cam,lrp.epsilon_plus_flat,lrp.epsilon_gamma_box,$BASELINES
# The seed replicates leave out integrated gradients (the costliest method) and the
# model-free baselines (the same maps for every seed).
SEED_METHODS=gradient_x_input,grad_cam,lrp.epsilon_plus_flat,lrp.epsilon_gamma_box
SIGMAS=0.5,1,2,3
mkdir -p "$RUNS/logs" "$RUNS/models"
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

sweep() {  # sweep NAME CONFIG MODEL [extra flags]: target predicted, the test split
    local name=$1 config=$2 model=$3
    shift 3
    [ -f "$RUNS/$name/done" ] && return 0
    step "$name" selrel sweep --dataset "synthetic_motion$config" --split test \
        --data-seed "$SEED" --model "$model" --target predicted --no-progress \
        --out "$RUNS/$name" "$@"
    touch "$RUNS/$name/done"
}

full() {  # full NAME CONFIG MODEL: seed 0, every method and sigma, 72 clips
    sweep "$@" --limit "$CLIPS" --methods "$METHODS" --sigmas "$SIGMAS"
}

if [ "$PART" = all ] || [ "$PART" = seed0 ]; then seed0; fi
if [ "$PART" = all ] || [ "$PART" = sanity ]; then randomised; fi
if [ "$PART" = all ] || [ "$PART" = seeds ]; then seeds; fi
if [ "$PART" = all ] || [ "$PART" = transformer ]; then transformer; fi
if [ "$PART" = all ] || [ "$PART" = reports ]; then reports; fi
echo "total ($PART) $(($(date +%s) - START)) s; end $(date -u +%FT%TZ) $(uptime)" >>"$TIMES"
cat "$TIMES"
}

seed0() {  # the shipped models' sweeps, randomisation check, reliance and zero padding
# Seed 0 (the shipped models): claims 1-3 on each model's own test split (default for
# the motion and biased models), claim 1 where appearance and motion are apart
# (distractors).
full default-motion "" c3d_small_motion
full default-biased "" c3d_small_biased
full biased_still-biased_still /biased_still c3d_small_biased_still
full distractors-motion /distractors c3d_small_motion
full distractors-distractors /distractors c3d_small_distractors

# Motion reliance (frame freezing) and faithfulness of the same clips. --faithfulness
# computes the deletion/insertion AUCs (22 model runs per map), so these use the
# cheapest method and one sigma; analysis.py joins the reliance to every method's
# spatial bias by clip_id.
reliance() {  # reliance NAME CONFIG MODEL
    sweep "reliance-$1" "$2" "$3" --limit "$CLIPS" --methods grad_cam --sigmas 1 \
        --faithfulness
}
reliance default-motion "" c3d_small_motion
reliance default-biased "" c3d_small_biased

# The paper's zero temporal padding beside the edge default. Padding changes only the
# selection, not the raw maps, so two methods (a gradient and an LRP one) suffice.
zero() {  # zero NAME CONFIG MODEL
    sweep "zero-$1" "$2" "$3" --limit "$CLIPS" --methods gradient_x_input,lrp.epsilon_plus_flat \
        --sigmas "$SIGMAS" --temporal-padding zero
}
zero default-motion "" c3d_small_motion
zero default-biased "" c3d_small_biased
reliance biased_still-biased_still /biased_still c3d_small_biased_still
zero biased_still-biased_still /biased_still c3d_small_biased_still
}

randomised() {  # cascading randomisation of the seed-0 motion and biased models
# Every model method (selrel sanity gives lrp.epsilon_gamma_box the model's input bounds,
# as a sweep does), and a model-free baseline, whose maps cannot depend on the weights:
# it must be flagged.
sanity() {  # sanity NAME CONFIG MODEL
    [ -s "$RUNS/sanity-$1.json" ] && return 0
    step "sanity-$1" selrel sanity --model "$3" --dataset "synthetic_motion$2" --split test \
        --data-seed "$SEED" --limit 6 --method gradient_x_input \
        --method integrated_gradients --method grad_cam --method lrp.epsilon_plus_flat \
        --method lrp.epsilon_gamma_box --method baseline.frame_difference \
        --figure "$RUNS/sanity-$1.png" >"$RUNS/sanity-$1.json.tmp"
    mv "$RUNS/sanity-$1.json.tmp" "$RUNS/sanity-$1.json"
}
sanity motion "" c3d_small_motion
sanity biased "" c3d_small_biased
}

seeds() {  # seeds 1 and 2 of each condition: training (unless present) and sweeps
# Seeds 1 and 2: trained with the recipe of the shipped models (their info.json), then
# swept on their own split (the same clips) with fewer methods.
train() {  # train CONDITION DATASET SEED
    local name=c3d_small_$1_seed$3
    [ -f "$RUNS/models/$name/info.json" ] && return 0
    [ "$TRAIN" = 0 ] && return 0
    step "train-$name" selrel train --dataset "$2" --out "$RUNS/train/$name" --epochs 2 \
        --arch c3d_small --width 1.0 --model-option 'stem_stride=[1,2,2]' --batch-size 8 \
        --lr 0.002 --weight-decay 0.0001 --warmup-epochs 0.25 --seed "$3" \
        --checkpoint-every 50 --export "$RUNS/models/$name" --no-progress
}
replicate() {  # replicate NAME CONFIG CONDITION SEED: one trained seed on its own split
    local model=$RUNS/models/c3d_small_$3_seed$4
    [ -f "$model/info.json" ] || { echo "no model $model: left out" >>"$TIMES"; return 0; }
    sweep "$1-$3-seed$4" "$2" "$model" --limit "$CLIPS" --methods "$SEED_METHODS" \
        --sigmas "$SIGMAS"
}
for seed in 1 2; do
    train motion synthetic_motion $seed
    train biased synthetic_motion/biased $seed
    replicate default "" motion $seed
    replicate default "" biased $seed
done
for seed in 1 2; do
    train distractors synthetic_motion/distractors $seed
    train biased_still synthetic_motion/biased_still $seed
    replicate distractors /distractors distractors $seed
    replicate biased_still /biased_still biased_still $seed
done
}

transformer() {  # the shipped video transformer beside the C3D on the same clips
# vit_small_motion (checkpoints/, trained by the command in its info.json) explained by
# AttnLRP and CP-LRP (the transformer composites) and gradient x input; the C3D's
# default-motion sweep has the same clips. Its report is written here, not in reports().
sweep default-vit "" vit_small_motion --limit "$CLIPS" \
    --methods gradient_x_input,lrp.attn,lrp.cp --sigmas "$SIGMAS"
[ -f "$RUNS/default-motion/done" ] && step report-transformer selrel report \
    "$RUNS/default-motion" "$RUNS/default-vit" --out "$OUT/transformer.md"
}

finished() {  # finished NAME...: the sweep directories of those that finished
    local name
    for name in "$@"; do [ -f "$RUNS/$name/done" ] && echo "$RUNS/$name"; done
}

reports() {  # the reports and the analysis (seconds), from the sweeps that finished
    local seeds=(-seed1 -seed2) own=() dis=()
    for name in default-motion default-biased biased_still-biased_still; do
        mapfile -t -O "${#own[@]}" own < <(finished "$name" "${seeds[@]/#/$name}")
    done
    mapfile -t dis < <(finished distractors-motion distractors-distractors \
        distractors-distractors-seed1 distractors-distractors-seed2)
    local sanity=() name
    for name in motion biased; do
        [ -s "$RUNS/sanity-$name.json" ] && sanity+=(--sanity "$RUNS/sanity-$name.json")
    done
    step report-own-split selrel report "${own[@]}" "${sanity[@]}" --out "$OUT/own_split.md"
    step report-distractors selrel report "${dis[@]}" --out "$OUT/distractors.md"
    mapfile -t rel < <(finished reliance-default-motion reliance-default-biased \
        reliance-biased_still-biased_still)
    step report-reliance selrel report "${rel[@]}" --out "$OUT/reliance.md"
    mapfile -t zero < <(finished zero-default-motion zero-default-biased \
        zero-biased_still-biased_still)
    step report-padding selrel report "${zero[@]}" --out "$OUT/padding.md"
    step analysis python "$OUT/analysis.py" "$RUNS" --out "$OUT/analysis.md"
}

main "$@"; exit
