#!/usr/bin/env bash
# GPU hosts: train here, or on one or several hosts over ssh with one process per host.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

VALUE_OPTIONS=(hosts port coordinator-host remote-dir log-dir)
SWITCH_OPTIONS=(nohup)

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [options] [--config.KEY=VALUE ...] [-- more training flags]

Trains on GPUs. Without --hosts: runs the training command here, in the repository root. With
--hosts: starts it over ssh on every host, one process per host using all of its GPUs; with
several hosts, process i (on the i-th host) gets --coordinator_address=HOST0:PORT
--num_processes=N --process_id=i for jax.distributed.initialize().

Hosts:
  --hosts=H0,H1,...        ssh destinations ([user@]host or ssh config names); none: run here
  --port=PORT              coordinator port on the first host (default: 8476)
  --coordinator-host=HOST  address the other hosts reach the first one at (default: the first
                           of --hosts without user@)
  --remote-dir=DIR         the repository on the hosts (default: this checkout's path, as on a
                           shared file system)
  --log-dir=DIR            on the hosts, relative to --remote-dir: process i appends its output to
                           DIR/process-i.log (default: workdirs/logs)
  --nohup                  start training detached on every host and return at once; without it
                           the output of all hosts is streamed here and the script ends with the
                           training (and stops the other ssh sessions when one process fails)
  --setup and --nohup apply to --hosts only.

$COMMON_HELP

Example:
  $SCRIPT_NAME --hosts=gpu0,gpu1 --setup='source .venv/bin/activate' \\
    --config=configs/omniglot.py --workdir=/shared/runs/omniglot
EOF
}

# Trains here, in the repository root.
train_here() {
  if [[ -n $SIAMESE_SETUP ]] || enabled nohup; then
    die "--setup and --nohup apply to --hosts only: set up this shell and run in the foreground"
  fi
  run cd "$REPO_ROOT"
  run "${TRAIN_CMD[@]}"
}

# Starts process i on the i-th host, all side by side; attached, waits for all of them and stops
# them all as soon as one fails, since the others would wait for it forever.
train_on_hosts() {
  local i line ssh_cmd pids=() flags=() count=${#HOSTS[@]}
  local coordinator=${SIAMESE_COORDINATOR_HOST:-${HOSTS[0]#*@}}
  for i in "${!HOSTS[@]}"; do
    if ((count > 1)); then
      flags=("--coordinator_address=$coordinator:$SIAMESE_PORT" "--num_processes=$count" "--process_id=$i")
    fi
    line=$(remote_train_line "$SIAMESE_REMOTE_DIR" "$SIAMESE_LOG_DIR/process-$i.log" \
      "${TRAIN_CMD[@]}" "${flags[@]}")
    ssh_cmd=(ssh "${HOSTS[i]}" "$line")
    if enabled dry-run || enabled nohup; then
      run "${ssh_cmd[@]}"
    else
      show "${ssh_cmd[@]}"
      "${ssh_cmd[@]}" &
      pids+=("$!")
    fi
  done
  for i in "${!pids[@]}"; do
    if ! wait -n; then
      kill "${pids[@]}" 2>/dev/null || true
      die "training failed on a host (see its log in $SIAMESE_LOG_DIR); closed all ssh sessions"
    fi
  done
}

parse_args "$@"
((${#POSITIONAL[@]} == 0)) || die "unexpected argument ${POSITIONAL[0]} (config overrides are --config.KEY=VALUE)"
: "${SIAMESE_PORT:=8476}" "${SIAMESE_REMOTE_DIR:=$REPO_ROOT}" "${SIAMESE_LOG_DIR:=workdirs/logs}"
require_positive_int port
train_command
IFS=', ' read -r -a HOSTS <<<"$SIAMESE_HOSTS"
if ((${#HOSTS[@]})); then
  train_on_hosts
else
  train_here
fi
