#!/usr/bin/env bash
# SLURM clusters: write a batch script that trains with one process per GPU, and submit it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

VALUE_OPTIONS=(nodes gpus-per-node time partition account job-name log-dir sbatch-args)
SWITCH_OPTIONS=()

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [options] [--config.KEY=VALUE ...] [-- more training flags]

Writes a batch script to LOG_DIR/JOB_NAME.sbatch and submits it with sbatch. The job runs
'srun python3 -u -m siamese_jax.main ...' as one task per GPU (--ntasks-per-node = --gpus-per-node);
jax.distributed.initialize() reads SLURM's variables and gives each task the GPU numbered by its
SLURM_LOCALID, so every task must see all GPUs of its node (no per-task GPU binding). The job runs
in this repository's root, so relative --config and --workdir paths are relative to it.

Job (--setup runs in the batch script, before srun):
  --gpus-per-node=N      required; also the number of tasks per node
  --nodes=N              default: 1
  --time=LIMIT           e.g. 04:00:00 (default: the partition's)
  --partition=NAME       default: the cluster's
  --account=NAME         default: yours
  --job-name=NAME        default: siamese-jax
  --log-dir=DIR          the batch script and the job's output, DIR/JOB_NAME-JOBID.out
                         (default: workdirs/slurm in the repository)
  --sbatch-args='ARGS'   more sbatch options, one #SBATCH line each, e.g. '--qos=high --mem=0'

$COMMON_HELP

Example:
  $SCRIPT_NAME --nodes=2 --gpus-per-node=8 --time=12:00:00 --partition=gpu \\
    --setup='source .venv/bin/activate' --config=configs/omniglot.py --workdir=workdirs/omniglot
EOF
}

# The batch script: SLURM directives, the --setup line, then srun of the training command.
batch_script() {
  local directives=("--job-name=$SIAMESE_JOB_NAME" "--nodes=$SIAMESE_NODES"
    "--ntasks-per-node=$SIAMESE_GPUS_PER_NODE" "--gpus-per-node=$SIAMESE_GPUS_PER_NODE")
  local extra
  read -r -a extra <<<"$SIAMESE_SBATCH_ARGS"
  [[ -z $SIAMESE_TIME ]] || directives+=("--time=$SIAMESE_TIME")
  [[ -z $SIAMESE_PARTITION ]] || directives+=("--partition=$SIAMESE_PARTITION")
  [[ -z $SIAMESE_ACCOUNT ]] || directives+=("--account=$SIAMESE_ACCOUNT")
  directives+=("${extra[@]}" "--chdir=$REPO_ROOT" "--output=$SIAMESE_LOG_DIR/%x-%j.out")
  printf '#!/bin/bash\n'
  printf '#SBATCH %s\n' "${directives[@]}"
  printf '# No -u: environment set-up scripts (module, conda) often read unset variables.\n'
  printf 'set -eo pipefail\n'
  [[ -z $SIAMESE_SETUP ]] || printf '%s\n' "$SIAMESE_SETUP"
  printf '%s\n' "$(shell_join srun --kill-on-bad-exit=1 "${TRAIN_CMD[@]}")"
}

# Writes CONTENT to PATH, shown as the here-document that would do the same.
write_file() {
  local path=$1 content=$2
  report "+ cat > $(shell_join "$path") <<'EOF'"$'\n'"$content"$'\n'"EOF"
  enabled dry-run || printf '%s\n' "$content" >"$path"
}

parse_args "$@"
((${#POSITIONAL[@]} == 0)) || die "unexpected argument ${POSITIONAL[0]} (config overrides are --config.KEY=VALUE)"
: "${SIAMESE_NODES:=1}" "${SIAMESE_JOB_NAME:=siamese-jax}" "${SIAMESE_LOG_DIR:=$REPO_ROOT/workdirs/slurm}"
require gpus-per-node
require_positive_int nodes gpus-per-node
[[ $SIAMESE_LOG_DIR == /* ]] || SIAMESE_LOG_DIR=$PWD/$SIAMESE_LOG_DIR
train_command
SCRIPT_FILE=$SIAMESE_LOG_DIR/$SIAMESE_JOB_NAME.sbatch
run mkdir -p "$SIAMESE_LOG_DIR"
write_file "$SCRIPT_FILE" "$(batch_script)"
run sbatch "$SCRIPT_FILE"
