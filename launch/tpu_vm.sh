#!/usr/bin/env bash
# Cloud TPU VMs: create one, put the code on every worker, train, read the logs, delete it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

VALUE_OPTIONS=(tpu-name zone project accelerator-type runtime-version remote-dir git-url git-ref log-file
  log-worker log-lines)
SWITCH_OPTIONS=(spot preemptible nohup follow)

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME COMMAND [options] [--config.KEY=VALUE ...] [-- more training flags]

Trains on a Cloud TPU VM, one host or a pod slice: every worker runs the same training command and
jax.distributed.initialize() finds the other workers by itself.

Commands:
  create   create the TPU VM
  setup    put the code on every worker (copy the files of this checkout that git does not
           ignore, or clone --git-url), then pip install -e . together with jax[tpu]
  run      start training on every worker, appending its output to --log-file on each worker and,
           unless --nohup, streaming it here until training ends
  logs     print the end of one worker's log
  delete   delete the TPU VM
  all      create, setup, run, delete; the TPU VM is deleted even when a step fails

TPU VM:
  --tpu-name=NAME          required
  --zone=ZONE              required, e.g. us-central2-b
  --project=PROJECT        default: gcloud's configured project
  --accelerator-type=TYPE  required by create, e.g. v4-8, v5litepod-16, v5p-8, v6e-8
  --runtime-version=V      default from the type: v2-, v3-, v4- tpu-ubuntu2204-base,
                           v5litepod- v2-alpha-tpuv5-lite, v5p- v2-alpha-tpuv5, v6e- v2-alpha-tpuv6e
  --spot, --preemptible    create a Spot (or legacy preemptible) TPU VM

Code and logs on the workers:
  --remote-dir=DIR         the code's folder, relative to the home directory (default: siamese-jax)
  --git-url=URL            setup clones URL instead of copying this checkout
  --git-ref=REF            branch, tag or commit of --git-url (default: HEAD)
  --log-file=PATH          relative to --remote-dir (default: workdirs/logs/train.log)
  --nohup                  run: start training detached and return at once
  --log-worker=N           logs: the worker to read, or all (default: 0)
  --log-lines=N            logs: how many lines (default: 100)
  --follow                 logs: keep printing new lines

$COMMON_HELP

Example:
  $SCRIPT_NAME all --tpu-name=siamese --zone=us-central2-b --accelerator-type=v4-8 \\
    --config=configs/omniglot.py --workdir=gs://BUCKET/omniglot --config.train.num_steps=1000
EOF
}

# The runtime version (TPU software) that goes with accelerator type $1, for JAX.
default_runtime_version() {
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

# Fills in and checks what create needs, before anything is created.
check_create() {
  require accelerator-type
  if [[ -z $SIAMESE_RUNTIME_VERSION ]]; then
    SIAMESE_RUNTIME_VERSION=$(default_runtime_version "$SIAMESE_ACCELERATOR_TYPE") ||
      die "no default runtime version for accelerator type $SIAMESE_ACCELERATOR_TYPE: give --runtime-version"
  fi
  if enabled spot && enabled preemptible; then
    die "--spot and --preemptible exclude each other: give one"
  fi
}

# Sets CODE_PATHS to what setup copies: the top-level paths of this checkout that git does not ignore.
check_setup() {
  if [[ -z $SIAMESE_GIT_URL ]]; then
    mapfile -t CODE_PATHS < <(git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard 2>/dev/null |
      tr '\0' '\n' | cut -d/ -f1 | sort -u)
    ((${#CODE_PATHS[@]})) || die "git lists no files to copy in $REPO_ROOT: use a git checkout, or give --git-url"
  fi
}

# Runs shell line $2 on worker $1 (a number or all).
on_workers() {
  run gcloud compute tpus tpu-vm ssh "$SIAMESE_TPU_NAME" "${LOCATION[@]}" "--worker=$1" "--command=$2"
}

create_tpu() {
  local kind=()
  if enabled spot; then
    kind=(--spot)
  elif enabled preemptible; then
    kind=(--preemptible)
  fi
  run gcloud compute tpus tpu-vm create "$SIAMESE_TPU_NAME" "${LOCATION[@]}" \
    "--accelerator-type=$SIAMESE_ACCELERATOR_TYPE" "--version=$SIAMESE_RUNTIME_VERSION" "${kind[@]}"
}

setup_workers() {
  local dir install
  dir=$(shell_join "$SIAMESE_REMOTE_DIR")
  install="cd $dir && $(shell_join "$SIAMESE_PYTHON" -m pip install -e . 'jax[tpu]')"
  if [[ -n $SIAMESE_GIT_URL ]]; then
    on_workers all "(test -d $dir/.git || git clone --quiet $(shell_join "$SIAMESE_GIT_URL") $dir) \
&& git -C $dir fetch --quiet origin $(shell_join "$SIAMESE_GIT_REF") \
&& git -C $dir checkout --quiet --detach FETCH_HEAD && $install"
  else
    on_workers all "mkdir -p $dir"
    run cd "$REPO_ROOT"
    run gcloud compute tpus tpu-vm scp --recurse "${CODE_PATHS[@]}" "$SIAMESE_TPU_NAME:$SIAMESE_REMOTE_DIR" \
      "${LOCATION[@]}" --worker=all
    on_workers all "$install"
  fi
}

start_training() {
  on_workers all "$(remote_train_line "$SIAMESE_REMOTE_DIR" "$SIAMESE_LOG_FILE" "${TRAIN_CMD[@]}")"
}

show_logs() {
  local tail=(tail -n "$SIAMESE_LOG_LINES")
  if enabled follow; then
    tail+=(-F)
  fi
  on_workers "$SIAMESE_LOG_WORKER" \
    "cd $(shell_join "$SIAMESE_REMOTE_DIR") && $(shell_join "${tail[@]}" "$SIAMESE_LOG_FILE")"
}

delete_tpu() {
  run gcloud compute tpus tpu-vm delete "$SIAMESE_TPU_NAME" "${LOCATION[@]}" --quiet
}

parse_args "$@"
((${#POSITIONAL[@]} == 1)) || die "give one command: create, setup, run, logs, delete or all"
: "${SIAMESE_REMOTE_DIR:=siamese-jax}" "${SIAMESE_GIT_REF:=HEAD}" "${SIAMESE_LOG_FILE:=workdirs/logs/train.log}"
: "${SIAMESE_LOG_WORKER:=0}" "${SIAMESE_LOG_LINES:=100}"
require tpu-name zone
LOCATION=("--zone=$SIAMESE_ZONE")
if [[ -n $SIAMESE_PROJECT ]]; then
  LOCATION+=("--project=$SIAMESE_PROJECT")
fi

case ${POSITIONAL[0]} in
  create)
    check_create
    create_tpu
    ;;
  setup)
    check_setup
    setup_workers
    ;;
  run)
    train_command
    start_training
    ;;
  logs) show_logs ;;
  delete) delete_tpu ;;
  all)
    if enabled nohup; then
      die "all deletes the TPU VM when training ends: --nohup would delete it at once"
    fi
    check_create
    check_setup
    train_command
    create_tpu
    trap delete_tpu EXIT
    setup_workers
    start_training
    ;;
  *) die "unknown command ${POSITIONAL[0]}: give create, setup, run, logs, delete or all" ;;
esac
