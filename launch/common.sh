# shellcheck shell=bash
# Shared by the launch scripts: option parsing, shell quoting, dry runs and the training command.
# Sourced, never run. A script sets VALUE_OPTIONS and SWITCH_OPTIONS (its own options, without the
# leading --) and a usage() function, then calls parse_args "$@".

if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 404)); then
  echo "${0##*/}: needs bash >= 4.4, this is ${BASH_VERSION} (on macOS: brew install bash)" >&2
  exit 2
fi

SCRIPT_NAME=${0##*/}
# shellcheck disable=SC2034  # used by the scripts that source this file
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Every option --foo-bar can also be given as the environment variable SIAMESE_FOO_BAR.
readonly ENV_PREFIX=SIAMESE_
COMMON_VALUE_OPTIONS=(config workdir python setup)
COMMON_SWITCH_OPTIONS=(dry-run)

# shellcheck disable=SC2034  # used by the scripts that source this file
COMMON_HELP="Training command (every script):
  --config=PATH          config file relative to the repository root, e.g. configs/omniglot.py
  --workdir=DIR          checkpoints and summaries (gs://... on TPU pods: all processes write there)
  --python=EXE           interpreter that runs siamese_jax.main (default: python3)
  --setup=LINE           shell line run first where training runs, e.g. 'source .venv/bin/activate'
  --config.KEY=VALUE     config override, passed through as is; so is everything after --
                         (environment: SIAMESE_OVERRIDES, split at whitespace)
  --dry-run              print every command (one per line, prefixed with '+ ') and run nothing
  -h, --help             this text

Every --some-option can also be set as the environment variable SIAMESE_SOME_OPTION
(switches with SIAMESE_SOME_SWITCH=1); options on the command line win."

# Stops with a one-line message that says what to fix.
die() {
  printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
  printf "Run '%s --help' for the options.\n" "$SCRIPT_NAME" >&2
  exit 2
}

# The environment variable behind option --NAME.
option_var() {
  local name=${1//-/_}
  printf '%s%s' "$ENV_PREFIX" "${name^^}"
}

# True when switch NAME is on (1, true or yes).
enabled() {
  local var
  var=$(option_var "$1")
  [[ ${!var} =~ ^(1|true|yes)$ ]]
}

# Joins words into one shell line, quoting each like Python's shlex.quote, so that the line can be
# pasted into a shell, sent to a remote one, or split back into the same words.
shell_join() {
  local word joined='' sq="'" escaped_sq="'\"'\"'"
  for word; do
    if [[ ! $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      word="'${word//"$sq"/"$escaped_sq"}'"
    fi
    joined+="${joined:+ }${word}"
  done
  printf '%s' "$joined"
}

# Prints TEXT, a record of what runs: to stdout on a dry run, else to stderr.
report() {
  if enabled dry-run; then
    printf '%s\n' "$1"
  else
    printf '%s\n' "$1" >&2
  fi
}

# Prints a command as one shell line prefixed with '+ '.
show() {
  report "+ $(shell_join "$@")"
}

# Prints a command and runs it, unless this is a dry run.
run() {
  show "$@"
  enabled dry-run || "$@"
}

# Sets the option variables from "$@" over the environment. Leaves the subcommand words in
# POSITIONAL and the pass-through training arguments in TRAIN_ARGS.
parse_args() {
  local values=("${COMMON_VALUE_OPTIONS[@]}" "${VALUE_OPTIONS[@]}")
  local switches=("${COMMON_SWITCH_OPTIONS[@]}" "${SWITCH_OPTIONS[@]}")
  local name var arg
  for name in "${values[@]}" "${switches[@]}"; do
    var=$(option_var "$name")
    printf -v "$var" '%s' "${!var:-}"
  done
  POSITIONAL=()
  read -r -a TRAIN_ARGS <<<"${SIAMESE_OVERRIDES:-}"
  while (($#)); do
    arg=$1
    shift
    case $arg in
      -h | --help)
        usage
        exit 0
        ;;
      --)
        TRAIN_ARGS+=("$@")
        break
        ;;
      --config.*) TRAIN_ARGS+=("$arg") ;;
      --*)
        name=${arg#--}
        name=${name%%=*}
        var=$(option_var "$name")
        if [[ " ${switches[*]} " == *" $name "* ]]; then
          [[ $arg != *=* ]] || die "--$name takes no value"
          printf -v "$var" 1
        elif [[ " ${values[*]} " == *" $name "* ]]; then
          if [[ $arg == *=* ]]; then
            printf -v "$var" '%s' "${arg#*=}"
          else
            (($#)) || die "--$name needs a value"
            printf -v "$var" '%s' "$1"
            shift
          fi
        else
          die "unknown option $arg"
        fi
        ;;
      -*) die "unknown option $arg" ;;
      *) POSITIONAL+=("$arg") ;;
    esac
  done
  : "${SIAMESE_PYTHON:=python3}"
}

# Fails naming the option and its environment variable when one of the settings NAME... is empty.
require() {
  local name var
  for name; do
    var=$(option_var "$name")
    [[ -n ${!var} ]] || die "missing --$name (or the environment variable $var)"
  done
}

# Fails unless each setting NAME... is a whole number above 0.
require_positive_int() {
  local name var
  for name; do
    var=$(option_var "$name")
    [[ ${!var} =~ ^[1-9][0-9]*$ ]] || die "--$name must be a whole number above 0, not '${!var}'"
  done
}

# Sets TRAIN_CMD to the training command that every process runs.
train_command() {
  require config workdir
  # shellcheck disable=SC2034  # used by the scripts that source this file
  TRAIN_CMD=("$SIAMESE_PYTHON" -u -m siamese_jax.main "--config=$SIAMESE_CONFIG" "--workdir=$SIAMESE_WORKDIR"
    "${TRAIN_ARGS[@]}")
}

# A shell line for a remote host: in DIR, after the --setup line, run the command COMMAND... with
# its output appended to LOG (relative to DIR). Attached, the output is also streamed back and the
# line ends with the command; with --nohup the line returns at once and the command goes on alone.
remote_train_line() {
  local dir=$1 log=$2 line
  shift 2
  line="cd $(shell_join "$dir") && mkdir -p $(shell_join "$(dirname "$log")") && "
  line+=${SIAMESE_SETUP:+"$SIAMESE_SETUP && "}
  if enabled nohup; then
    line+="{ nohup $(shell_join "$@") >> $(shell_join "$log") 2>&1 < /dev/null & }"
  else
    line="set -o pipefail; ${line}$(shell_join "$@") 2>&1 | tee -a $(shell_join "$log")"
  fi
  printf '%s' "$line"
}
