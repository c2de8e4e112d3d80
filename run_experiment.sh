#!/usr/bin/env bash
# The experiment grids of the paper, one ssal.py run per cell and seed; then `python report.py` makes the tables.
#
#   bash run_experiment.sh table1     # Table 1: settings x {supervised, fixmatch(+FA), freematch(+FA)} x 5 selectors
#   bash run_experiment.sh table2     # Table 2: FreeMatch, CIFAR-100 #100: none / +L_s / +L_s+L_c, 4 selectors
#   bash run_experiment.sh fig2       # Fig. 2: FreeMatch + FA, CIFAR-100 #100, T in 1 2 5 10 15 20, 4 selectors
#   bash run_experiment.sh readings   # FA's readings (docs/fa-readings.md), one at a time, on a validation split:
#                                     # no FA, today's FA, each other reading, lambda_s 0.1 / 0.3, warm-up; seeds 0-4
#   bash run_experiment.sh readings-test   # the committed pick ($PICK) against no FA on fresh seeds (5-9)
#
# Knobs (environment variables):
#   PRESET=paper|digits|fashionmnist   paper: CIFAR-100 / TinyImageNet as in the paper; digits: the same grid
#                         shape on the embedded dataset (#10 and #20 stand for #100 / #200 and #200 / #400), CPU-sized;
#                         fashionmnist: the same on Fashion-MNIST's 59,000-image pool (docs/fashionmnist.md)
#   DATASETS="cifar100:100 tinyimagenet:200"   settings as dataset:budget (default: the grid's own)
#   SEEDS="0 1 2"         trials (the paper averages 3)
#   SELECTORS="random coreset alphamix activeft noise"
#   SSLS="supervised fixmatch freematch"   Table 1's SSL rows (each SSL algorithm also gets its "+ FA" row)
#   ITERS=N               training iterations per round (default: the dataset preset of ssal.py)
#   GPUS="0 1 2 3"        run one job per GPU in parallel (CUDA_VISIBLE_DEVICES); unset: one after another
#   JOBS=2                without GPUS: that many CPU jobs in parallel, each with nproc / JOBS threads
#   DRY_RUN=1             print the commands (and their count) instead of running them
#   SLURM=1               write $OUT/<grid>.sbatch, an sbatch array with one task per run, instead of running;
#                         it survives preemption and time limits: --requeue, and USR1 300 s before the limit makes
#                         the run checkpoint (TERM to ssal.py, which exits 143) and the task requeue itself
#                         (scontrol requeue); a requeued task resumes from $OUT/ckpt/. Exit codes 2 (user error)
#                         and 3 (loss diverged) are never requeued
#   OUT=results/runs      where the result files and round-0 checkpoints go (readings: <dir>/sweep, readings-test:
#                         <dir>/test, PICK <dir>/pick.txt; <dir>: digits results/fa-readings, fashionmnist
#                         results/fashionmnist/readings, paper results/paper-readings)
#   VAL=200               readings grids: --val-size (default: 200 on digits, the dataset's preset otherwise)
#   PICK=FILE             readings-test: the pick, one line per SSL algorithm, '<ssl> <ssl.py FA flags>'
#                         (report.py --readings writes it as pick.txt beside the sweep's tables)
#   EXTRA="--weights vit_small_patch2_32_mlp_im_1k_32.pth"   flags added to every run
#
# Resumable: a run whose result file exists is skipped (ssal.py --skip-existing), an interrupted run resumes from
# its checkpoint $OUT/ckpt/<name>.pt when its command runs again, and the round-0 model of a setting is trained
# once and shared by its selectors (ssal.py keys it by every flag it depends on).
set -euo pipefail
cd "$(dirname "$0")"

GRID=${1:-table1}
PRESET=${PRESET:-paper}
SEEDS_SET=${SEEDS:+1} SELECTORS_SET=${SELECTORS:+1} SSLS_SET=${SSLS:+1} OUT_SET=${OUT:+1}   # given by the user (the readings grids have their own defaults)
SEEDS=${SEEDS:-0 1 2}
SELECTORS=${SELECTORS:-random coreset alphamix activeft noise}
SSLS=${SSLS:-supervised fixmatch freematch}
OUT=${OUT:-results/runs}
EXTRA=${EXTRA:-}
PY=${PYTHON:-python}

if [ "$PRESET" = digits ]; then
  SETTINGS_T1="digits:10 digits:20"; SETTING_100="digits:10"; VAL=${VAL:-200}; READINGS_DIR=results/fa-readings
elif [ "$PRESET" = fashionmnist ]; then   # docs/fashionmnist.md; EXTRA="--data-dir DIR" if not ./data
  SETTINGS_T1="fashionmnist:10 fashionmnist:20"; SETTING_100="fashionmnist:10"; VAL=${VAL:-1000}
  READINGS_DIR=results/fashionmnist/readings
elif [ "$PRESET" = paper ]; then
  SETTINGS_T1="cifar100:100 cifar100:200 tinyimagenet:200 tinyimagenet:400"; SETTING_100="cifar100:100"
  READINGS_DIR=results/paper-readings
else
  echo "error: PRESET must be paper, digits or fashionmnist, not '$PRESET'" >&2; exit 2
fi

RUNS=()   # one command line per run; runs of one setting are adjacent so that they share a GPU worker
add() { RUNS+=("$PY ssal.py $* --out $OUT --skip-existing ${ITERS:+--iters $ITERS} $EXTRA"); }
not_random() { for al in $SELECTORS; do [ "$al" = random ] || echo "$al"; done; }

case "$GRID" in
  table1)
    for s in ${DATASETS:-$SETTINGS_T1}; do ds=${s%%:*}; b=${s##*:}
      for seed in $SEEDS; do
        for ssl in $SSLS; do
          for al in $SELECTORS; do add --dataset "$ds" --budget "$b" --ssl $ssl --al "$al" --seed "$seed"; done
          # the "+ FA" rows: SSL algorithms only; with a Random column, which the paper's Table 1 lacks (does FA help
          # through the trained model alone, or through the selection?)
          if [ $ssl != supervised ]; then
            for al in $SELECTORS; do add --dataset "$ds" --budget "$b" --ssl $ssl --fa --al "$al" --seed "$seed"; done
          fi
        done
      done
    done ;;
  table2)
    for s in ${DATASETS:-$SETTING_100}; do ds=${s%%:*}; b=${s##*:}
      for seed in $SEEDS; do
        for fa in "" "--fa --lambda-c 0" "--fa"; do   # FreeMatch / + L_s / + L_s + L_c
          for al in $(not_random); do add --dataset "$ds" --budget "$b" --ssl freematch $fa --al "$al" --seed "$seed"; done
        done
      done
    done ;;
  fig2)
    for s in ${DATASETS:-$SETTING_100}; do ds=${s%%:*}; b=${s##*:}
      for seed in $SEEDS; do
        for T in 1 2 5 10 15 20; do
          for al in $(not_random); do add --dataset "$ds" --budget "$b" --ssl freematch --fa --queue-len $T --al "$al" --seed "$seed"; done
        done
      done
    done ;;
  readings|readings-test)
    if [ -z "${VAL:-}" ] && [ -z "${DATASETS:-}" ]; then
      echo "error: the readings grids choose on a validation split: set VAL (--val-size) for PRESET=$PRESET" >&2; exit 2
    fi ;;&
  readings)  # one reading at a time against today's FA (the first line: no FA); chosen on validation, so
             # every run holds out --val-size images; the pick (report.py --readings) is committed before readings-test
    READINGS=("" "--fa" "--fa --ls-samples masked" "--fa --lc-norm unit --lambda-c 0.5" "--fa --lc-views all"
              "--fa --fa-trainings query" "--fa --lambda-s 0.1" "--fa --lambda-s 0.3" "--fa --fa-warmup 100")
    [ -n "${SELECTORS_SET:-}" ] || SELECTORS="coreset random"
    [ -n "${SSLS_SET:-}" ] || SSLS="fixmatch freematch"
    [ -n "${SEEDS_SET:-}" ] || SEEDS="0 1 2 3 4"
    [ -n "${OUT_SET:-}" ] || OUT=$READINGS_DIR/sweep   # val runs in their own folder
    for seed in $SEEDS; do   # seed-major: a grid cut short still covers every reading
      for s in ${DATASETS:-$SETTINGS_T1}; do ds=${s%%:*}; b=${s##*:}
        for ssl in $SSLS; do
          for fa in "${READINGS[@]}"; do
            for al in $SELECTORS; do add --dataset "$ds" --budget "$b" --ssl $ssl $fa --al "$al" --seed "$seed" ${VAL:+--val-size $VAL}; done
          done
        done
      done
    done ;;
  readings-test)  # the pick against no FA, on seeds that took no part in choosing it
    PICK=${PICK:-$READINGS_DIR/pick.txt}
    [ -f "$PICK" ] || { echo "error: no pick file $PICK (report.py --readings writes one; commit it first)" >&2; exit 2; }
    [ -n "${SELECTORS_SET:-}" ] || SELECTORS="coreset alphamix activeft noise"
    [ -n "${SEEDS_SET:-}" ] || SEEDS="5 6 7 8 9"
    [ -n "${OUT_SET:-}" ] || OUT=$READINGS_DIR/test
    for seed in $SEEDS; do
      for s in ${DATASETS:-$SETTINGS_T1}; do ds=${s%%:*}; b=${s##*:}
        while read -r ssl flags; do
          [ -n "$ssl" ] && [ "${ssl:0:1}" != "#" ] || continue
          for fa in "" "$flags"; do
            for al in $SELECTORS; do add --dataset "$ds" --budget "$b" --ssl $ssl $fa --al "$al" --seed "$seed" ${VAL:+--val-size $VAL}; done
          done
        done < "$PICK"
      done
    done ;;
  *) echo "error: unknown grid '$GRID' (use table1, table2, fig2, readings or readings-test)" >&2; exit 2 ;;
esac

N=${#RUNS[@]}
if [ -n "${DRY_RUN:-}" ]; then
  printf '%s\n' "${RUNS[@]}"
  echo "# $GRID: $N runs"
  exit 0
fi

mkdir -p "$OUT"
if [ -n "${SLURM:-}" ]; then
  printf '%s\n' "${RUNS[@]}" > "$OUT/$GRID.commands"
  cat > "$OUT/$GRID.sbatch" <<EOF
#!/usr/bin/env bash
#SBATCH --job-name=ssal-$GRID
#SBATCH --array=0-$((N - 1))
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --output=$OUT/slurm-%A_%a.log
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
# Preemption and time limits lose at most a few iterations: ssal.py checkpoints into $OUT/ckpt/, and rerunning a
# command resumes from its checkpoint (--skip-existing skips a run that has finished). 300 s before the time limit
# Slurm sends USR1 to this shell: it sends TERM to ssal.py, which finishes its iteration, checkpoints and exits
# 143, then the task requeues itself. On preemption (TERM) the same happens and Slurm's --requeue puts it back.
# Exit codes 2 (user error) and 3 (loss diverged) are never requeued; the task exits with ssal.py's exit code.
# One task per line of $GRID.commands. Tasks of one setting may train its round-0 model at the same time;
# the results stay correct (checkpoints are written atomically), only that training is repeated.
cd "$PWD"
cmd=\$(sed -n "\$((SLURM_ARRAY_TASK_ID + 1))p" "$OUT/$GRID.commands")
task="\${SLURM_ARRAY_JOB_ID}_\${SLURM_ARRAY_TASK_ID}"
echo "[\$(date '+%F %T')] task \$task, start \$((\${SLURM_RESTART_COUNT:-0} + 1)): \$cmd"
pid="" stop="" trapped=""
# a trapped signal makes 'wait' return early: note it, pass TERM on, and wait again (below)
trap 'trapped=1; stop=USR1; [ -z "\$pid" ] || kill -TERM "\$pid" 2>/dev/null' USR1
trap 'trapped=1; stop=\${stop:-TERM}; [ -z "\$pid" ] || kill -TERM "\$pid" 2>/dev/null' TERM
eval "exec \$cmd" &   # exec: \$pid is python itself, not a subshell
pid=\$!
[ -z "\$stop" ] || kill -TERM "\$pid" 2>/dev/null   # a signal that came before \$pid was known
while :; do
  trapped=""
  wait "\$pid"; rc=\$?
  [ -n "\$trapped" ] || break   # python has exited (not just a signal that interrupted wait)
done
echo "[\$(date '+%F %T')] task \$task: exit code \$rc\${stop:+ after \$stop}"
if [ "\$stop" = USR1 ]; then   # time limit: requeue unless the run finished, or ended for good (2, 3)
  case \$rc in
    0|2|3) ;;
    *) scontrol requeue "\${SLURM_ARRAY_JOB_ID}_\${SLURM_ARRAY_TASK_ID}" || echo "scontrol requeue \$task failed" >&2 ;;
  esac
fi
exit \$rc
EOF
  echo "wrote $OUT/$GRID.sbatch ($N tasks): submit it with sbatch $OUT/$GRID.sbatch"
  exit 0
fi

echo "$GRID: $N runs into $OUT"
# other ssal.py runs share this machine's cores: JOBS and the threads per job assume they are free, and each run's
# time_* figures come out inflated (docs/long-runs.md)
others=$(command -v pgrep > /dev/null && pgrep -fc '(^|[ /])ssal\.py( |$)' || true)  # no procps: no warning
if [ "${others:-0}" -gt 0 ]; then
  echo "warning: $others other ssal.py process(es) already run on this machine, sharing its $(nproc) cores with this" \
       "grid: its runs will be slower and their recorded times inflated" >&2
fi
if [ -n "${GPUS:-}" ]; then
  read -ra G <<< "$GPUS"; pin() { echo "CUDA_VISIBLE_DEVICES=$1"; }
elif [ "${JOBS:-1}" -gt 1 ]; then  # CPU workers, the cores split between them
  G=($(seq 0 $((JOBS - 1)))); threads=$(( $(nproc) / JOBS )); [ "$threads" -ge 1 ] || threads=1
  pin() { echo "OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads}"; }
else
  G=()
fi
if [ ${#G[@]} -eq 0 ]; then
  for cmd in "${RUNS[@]}"; do echo "+ $cmd"; eval "$cmd"; done
else
  # one worker per GPU (or CPU job); a worker takes whole settings (all selectors of one setting and seed) so
  # that the setting's round-0 model is trained once, then reused
  key() { echo "$1" | sed -E 's/--al [a-z]+//'; }
  declare -A owner=()
  next=0
  for i in "${!G[@]}"; do : > "$OUT/.worker$i"; done
  for cmd in "${RUNS[@]}"; do
    k=$(key "$cmd")
    if [ -z "${owner[$k]+x}" ]; then owner[$k]=$next; next=$(( (next + 1) % ${#G[@]} )); fi
    echo "$cmd" >> "$OUT/.worker${owner[$k]}"
  done
  for i in "${!G[@]}"; do
    env=$(pin "${G[$i]}")
    ( while IFS= read -r cmd; do echo "+ [$env] $cmd"; eval "$env $cmd" < /dev/null; done < "$OUT/.worker$i" ) &  # a run must not read the list
  done
  wait
fi
echo "done: python report.py --runs $OUT"
