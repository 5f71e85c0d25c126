"""The launch scripts print (dry run) and run (with stand-ins for gcloud, ssh, sbatch) the right commands."""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch'

CONFIG = 'configs/omniglot.py'
TRAIN = ['python3', '-u', '-m', 'siamese_jax.main', f'--config={CONFIG}', '--workdir=gs://bucket/run']
TRAINING_ARGS = (f'--config={CONFIG}', '--workdir=gs://bucket/run')

needs_git = pytest.mark.skipif(not (REPO / '.git').exists() or shutil.which('git') is None,
                               reason='tpu_vm.sh setup copies what git lists: needs git and a checkout')

TPU = ('--tpu-name=siamese', '--zone=us-central2-b')
GCLOUD_TPU = ['gcloud', 'compute', 'tpus', 'tpu-vm']
LOCATION = ['--zone=us-central2-b']

# Records its name and arguments as one JSON line in $STUB_LOG; exits 1 when an argument contains
# $STUB_FAIL, else sleeps $STUB_SLEEP seconds (to stand for a long training run) and exits 0.
STUB = f"""#!{sys.executable} -S
import json, os, sys, time
with open(os.environ['STUB_LOG'], 'a') as log:
  log.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + '\\n')
fail = os.environ.get('STUB_FAIL')
if fail and any(fail in arg for arg in sys.argv[1:]):
  sys.exit(1)
time.sleep(float(os.environ.get('STUB_SLEEP', '0')))
"""


def launch(script: str, *args: str, env: dict[str, str] | None = None,
           cwd: pathlib.Path = REPO) -> subprocess.CompletedProcess:
  """Runs launch/<script>.sh with bash, with no SIAMESE_* settings from the calling environment."""
  environ = {'PATH': os.environ['PATH'], 'HOME': os.environ.get('HOME', '/tmp'), **(env or {})}
  return subprocess.run(['bash', str(LAUNCH / f'{script}.sh'), *args], env=environ, cwd=cwd,
                        capture_output=True, text=True, check=False)


def dry_run(script: str, *args: str, **kwargs) -> list[list[str]]:
  """The commands that a dry run prints, each split back into its arguments."""
  result = launch(script, '--dry-run', *args, **kwargs)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
  return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith('+ ')]


def on_workers(worker: str, line: str) -> list[str]:
  """The expected gcloud command that runs shell line `line` on TPU worker `worker`."""
  return GCLOUD_TPU + ['ssh', 'siamese'] + LOCATION + [f'--worker={worker}', f'--command={line}']


def attached_line(directory: str, log: str, command: list[str], setup: str = '') -> str:
  """The expected remote shell line that runs `command`, streaming its output and appending it to `log`."""
  setup = f'{setup} && ' if setup else ''
  return (f'set -o pipefail; cd {shlex.quote(directory)} && mkdir -p {os.path.dirname(log)} && {setup}'
          f'{shlex.join(command)} 2>&1 | tee -a {log}')


def detached_line(directory: str, log: str, command: list[str]) -> str:
  """The expected remote shell line that starts `command` with nohup, its output going to `log`."""
  return (f'cd {shlex.quote(directory)} && mkdir -p {os.path.dirname(log)} && '
          f'{{ nohup {shlex.join(command)} >> {log} 2>&1 < /dev/null & }}')


@pytest.fixture
def stubs(tmp_path):
  """Stand-ins for gcloud, ssh and sbatch first on PATH; returns (environment, read_calls)."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for name in ('gcloud', 'ssh', 'sbatch'):
    (bin_dir / name).write_text(STUB)
    (bin_dir / name).chmod(0o755)
  log = tmp_path / 'calls.jsonl'
  env = {'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'STUB_LOG': str(log)}

  def read_calls() -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

  return env, read_calls


def copied_paths() -> list[str]:
  """What tpu_vm.sh setup copies: the top-level paths that git does not ignore."""
  files = subprocess.run(['git', '-C', str(REPO), 'ls-files', '--cached', '--others', '--exclude-standard'],
                         capture_output=True, text=True, check=True).stdout.split()
  return sorted({f.split('/')[0] for f in files})


# Cloud TPU VMs.


@needs_git
def test_tpu_all_creates_sets_up_trains_and_deletes():
  commands = dry_run('tpu_vm', 'all', *TPU, '--accelerator-type=v4-32', '--spot', *TRAINING_ARGS)
  install = "cd siamese-jax && python3 -m pip install -e . 'jax[tpu]'"
  assert commands == [
      GCLOUD_TPU + ['create', 'siamese'] + LOCATION + ['--accelerator-type=v4-32', '--version=tpu-ubuntu2204-base',
                                                       '--spot'],
      on_workers('all', 'mkdir -p siamese-jax'),
      ['cd', str(REPO)],
      GCLOUD_TPU + ['scp', '--recurse', *copied_paths(), 'siamese:siamese-jax'] + LOCATION + ['--worker=all'],
      on_workers('all', install),
      on_workers('all', attached_line('siamese-jax', 'workdirs/logs/train.log', TRAIN)),
      GCLOUD_TPU + ['delete', 'siamese'] + LOCATION + ['--quiet'],
  ]
  assert {'siamese_jax', 'setup.cfg', 'pyproject.toml'} <= set(commands[3])
  assert 'workdirs' not in commands[3] and '.git' not in commands[3]


@pytest.mark.parametrize('accelerator, runtime', [
    ('v4-8', 'tpu-ubuntu2204-base'),
    ('v5litepod-16', 'v2-alpha-tpuv5-lite'),
    ('v5p-8', 'v2-alpha-tpuv5'),
    ('v6e-8', 'v2-alpha-tpuv6e'),
])
def test_tpu_create_picks_the_runtime_version_of_the_accelerator(accelerator, runtime):
  (command,) = dry_run('tpu_vm', 'create', *TPU, f'--accelerator-type={accelerator}', '--project=proj')
  assert command == GCLOUD_TPU + ['create', 'siamese', '--zone=us-central2-b', '--project=proj',
                                  f'--accelerator-type={accelerator}', f'--version={runtime}']


def test_tpu_create_takes_an_explicit_runtime_version_and_preemptible():
  (command,) = dry_run('tpu_vm', 'create', *TPU, '--accelerator-type', 'v7x-8', '--runtime-version', 'my-runtime',
                       '--preemptible')
  assert command[-3:] == ['--accelerator-type=v7x-8', '--version=my-runtime', '--preemptible']


def test_tpu_run_passes_overrides_through_quoted_for_the_remote_shell():
  override = '--config.model.name=it\'s "$HOME" a\\b *'  # through two levels of quoting
  (command,) = dry_run('tpu_vm', 'run', *TPU, *TRAINING_ARGS, override, '--', '--jax_log_compiles')
  line = attached_line('siamese-jax', 'workdirs/logs/train.log', TRAIN + [override, '--jax_log_compiles'])
  assert command == on_workers('all', line)
  remote_words = shlex.split(line.split('&& ', 2)[2].split(' 2>&1')[0])
  assert remote_words == TRAIN + [override, '--jax_log_compiles']


def test_tpu_run_nohup_detaches_with_setup_and_own_paths():
  (command,) = dry_run('tpu_vm', 'run', *TPU, *TRAINING_ARGS, '--nohup', '--remote-dir=code',
                       '--log-file=logs/a.log', '--python=python3.11', "--setup=export A='b c'")
  train = ['python3.11'] + TRAIN[1:]
  assert command == on_workers('all', "cd code && mkdir -p logs && export A='b c' && "
                               f'{{ nohup {shlex.join(train)} >> logs/a.log 2>&1 < /dev/null & }}')


def test_tpu_settings_from_the_environment_match_flags_and_flags_win():
  flags = dry_run('tpu_vm', 'run', *TPU, *TRAINING_ARGS, '--config.a=1', '--nohup')
  env = {'SIAMESE_TPU_NAME': 'siamese', 'SIAMESE_ZONE': 'us-central2-b', 'SIAMESE_CONFIG': CONFIG,
         'SIAMESE_WORKDIR': 'gs://bucket/run', 'SIAMESE_OVERRIDES': '--config.a=1', 'SIAMESE_NOHUP': '1'}
  assert dry_run('tpu_vm', 'run', env=env) == flags
  assert dry_run('tpu_vm', 'run', '--zone=other', env=env)[0][6] == '--zone=other'


def test_tpu_setup_from_git_clones_the_ref_then_installs():
  (command,) = dry_run('tpu_vm', 'setup', *TPU, '--git-url=https://example.com/siamese-jax.git', '--git-ref=v1')
  assert command == on_workers(
      'all', '(test -d siamese-jax/.git || git clone --quiet https://example.com/siamese-jax.git siamese-jax) '
      '&& git -C siamese-jax fetch --quiet origin v1 && git -C siamese-jax checkout --quiet --detach FETCH_HEAD '
      "&& cd siamese-jax && python3 -m pip install -e . 'jax[tpu]'")


@pytest.mark.parametrize('args, worker, tail', [
    ((), '0', 'tail -n 100 workdirs/logs/train.log'),
    (('--log-worker=all', '--log-lines=5', '--follow'), 'all', 'tail -n 5 -F workdirs/logs/train.log'),
])
def test_tpu_logs_tails_the_log_of_a_worker(args, worker, tail):
  assert dry_run('tpu_vm', 'logs', *TPU, *args) == [on_workers(worker, f'cd siamese-jax && {tail}')]


@pytest.mark.parametrize('args, message', [
    ((), 'give one command'),
    (('start', *TPU), 'unknown command start'),
    (('run', '--zone=z', *TRAINING_ARGS), 'missing --tpu-name (or the environment variable SIAMESE_TPU_NAME)'),
    (('run', '--tpu-name=t', *TRAINING_ARGS), 'missing --zone (or the environment variable SIAMESE_ZONE)'),
    (('run', *TPU, '--workdir=w'), 'missing --config (or the environment variable SIAMESE_CONFIG)'),
    (('create', *TPU), 'missing --accelerator-type'),
    (('create', *TPU, '--accelerator-type=v9-8'), 'no default runtime version for accelerator type v9-8'),
    (('create', *TPU, '--accelerator-type=v4-8', '--spot', '--preemptible'), '--spot and --preemptible'),
    (('all', *TPU, '--accelerator-type=v4-8', f'--config={CONFIG}'), 'missing --workdir'),
    (('all', *TPU, '--accelerator-type=v4-8', *TRAINING_ARGS, '--nohup'), '--nohup would delete it'),
    (('run', *TPU, '--zonee=z'), 'unknown option --zonee=z'),
    (('run', *TPU, '--nohup=1'), '--nohup takes no value'),
    (('run', '--tpu-name=t', '--zone'), '--zone needs a value'),
])
def test_tpu_bad_settings_fail_before_running_anything(args, message):
  result = launch('tpu_vm', '--dry-run', *args)
  assert result.returncode == 2
  assert result.stdout == ''
  assert message in result.stderr and '--help' in result.stderr


@needs_git
def test_tpu_all_runs_what_the_dry_run_prints(stubs):
  env, calls = stubs
  args = ('all', *TPU, '--accelerator-type=v5litepod-16', *TRAINING_ARGS)
  printed = dry_run('tpu_vm', *args)
  result = launch('tpu_vm', *args, env=env)
  assert result.returncode == 0, result.stderr
  assert calls() == [c for c in printed if c[0] != 'cd']  # cd is a shell builtin, not a program
  assert [shlex.split(line[2:]) for line in result.stderr.splitlines() if line.startswith('+ ')] == printed


@needs_git
def test_tpu_all_deletes_the_tpu_when_a_step_fails(stubs):
  env, calls = stubs
  result = launch('tpu_vm', 'all', *TPU, '--accelerator-type=v4-8', *TRAINING_ARGS,
                  env={**env, 'STUB_FAIL': 'pip'})
  assert result.returncode == 1
  assert [call[4] for call in calls()] == ['create', 'ssh', 'scp', 'ssh', 'delete']


# GPU hosts.


def test_gpu_without_hosts_runs_here_in_the_repository_root():
  assert dry_run('gpu_host', *TRAINING_ARGS, '--config.x=1') == [['cd', str(REPO)], TRAIN + ['--config.x=1']]


def test_gpu_one_host_runs_without_coordinator_flags():
  (command,) = dry_run('gpu_host', '--hosts=me@gpu0', '--setup=source .venv/bin/activate', *TRAINING_ARGS)
  assert command == ['ssh', 'me@gpu0', attached_line(str(REPO), 'workdirs/logs/process-0.log', TRAIN,
                                                     setup='source .venv/bin/activate')]


def test_gpu_hosts_each_get_their_process_id_and_the_coordinator():
  hosts = ['me@gpu0', 'gpu1', 'gpu2']
  commands = dry_run('gpu_host', f'--hosts={",".join(hosts)}', '--port=1234', '--remote-dir=/code', *TRAINING_ARGS,
                     '--config.x=1')
  assert commands == [[
      'ssh', host,
      attached_line('/code', f'workdirs/logs/process-{i}.log', TRAIN + [
          '--config.x=1', '--coordinator_address=gpu0:1234', '--num_processes=3', f'--process_id={i}'])
  ] for i, host in enumerate(hosts)]


def test_gpu_hosts_nohup_and_coordinator_host():
  commands = dry_run('gpu_host', '--hosts=a b', '--coordinator-host=10.0.0.1', '--nohup', '--log-dir=logs',
                     *TRAINING_ARGS)
  assert [c[1] for c in commands] == ['a', 'b']
  assert commands[1][2] == detached_line(str(REPO), 'logs/process-1.log', TRAIN + [
      '--coordinator_address=10.0.0.1:8476', '--num_processes=2', '--process_id=1'])


@pytest.mark.parametrize('args, message', [
    (('--workdir=w',), 'missing --config (or the environment variable SIAMESE_CONFIG)'),
    (('--config=c',), 'missing --workdir (or the environment variable SIAMESE_WORKDIR)'),
    ((*TRAINING_ARGS, '--nohup'), '--setup and --nohup apply to --hosts only'),
    ((*TRAINING_ARGS, '--hosts=a,b', '--port=http'), '--port must be a whole number'),
    ((*TRAINING_ARGS, 'train.steps=3'), 'unexpected argument train.steps=3'),
])
def test_gpu_bad_settings_fail_before_running_anything(args, message):
  result = launch('gpu_host', '--dry-run', *args)
  assert (result.returncode, result.stdout) == (2, '')
  assert message in result.stderr


def test_gpu_hosts_run_side_by_side(stubs):
  env, calls = stubs
  start = time.monotonic()
  result = launch('gpu_host', '--hosts=g0,g1,g2', *TRAINING_ARGS, env={**env, 'STUB_SLEEP': '2'})
  assert result.returncode == 0, result.stderr
  assert time.monotonic() - start < 5.5  # three 2 s sessions at once: one after another takes 6 s
  assert sorted(calls()) == sorted(dry_run('gpu_host', '--hosts=g0,g1,g2', *TRAINING_ARGS))


def test_gpu_one_failed_host_stops_the_other_sessions(stubs):
  env, calls = stubs
  start = time.monotonic()
  result = launch('gpu_host', '--hosts=g0,g1,g2', *TRAINING_ARGS,
                  env={**env, 'STUB_SLEEP': '60', 'STUB_FAIL': '--process_id=1'})
  assert time.monotonic() - start < 30  # the 60 s sessions were stopped, and left no open output behind
  assert result.returncode == 2
  assert 'training failed on a host' in result.stderr
  assert any('--process_id=1' in call[2] for call in calls())


# SLURM.


def test_slurm_dry_run_prints_the_batch_script_and_sbatch():
  result = launch('slurm', '--dry-run', '--nodes=2', '--gpus-per-node=4', '--time=04:00:00', '--partition=gpu',
                  '--account=lab', '--sbatch-args=--qos=high  --mem=0', '--setup=module load cuda', *TRAINING_ARGS,
                  '--config.x=a b')
  assert result.returncode == 0, result.stderr
  logs = REPO / 'workdirs' / 'slurm'
  assert result.stdout == f"""+ mkdir -p {logs}
+ cat > {logs}/siamese-jax.sbatch <<'EOF'
#!/bin/bash
#SBATCH --job-name=siamese-jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --time=04:00:00
#SBATCH --partition=gpu
#SBATCH --account=lab
#SBATCH --qos=high
#SBATCH --mem=0
#SBATCH --chdir={REPO}
#SBATCH --output={logs}/%x-%j.out
# No -u: environment set-up scripts (module, conda) often read unset variables.
set -eo pipefail
module load cuda
srun --kill-on-bad-exit=1 {shlex.join(TRAIN + ['--config.x=a b'])}
EOF
+ sbatch {logs}/siamese-jax.sbatch
"""


def test_slurm_writes_the_printed_script_and_submits_it(stubs, tmp_path):
  env, calls = stubs
  args = ('--gpus-per-node=1', '--job-name=run1', '--log-dir=slurm', *TRAINING_ARGS)
  printed = launch('slurm', '--dry-run', *args, cwd=tmp_path).stdout.splitlines()
  result = launch('slurm', *args, env=env, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  script = tmp_path / 'slurm' / 'run1.sbatch'
  assert script.read_text().splitlines() == printed[2:-2]
  assert calls() == [['sbatch', str(script)]]
  assert f'#SBATCH --output={tmp_path}/slurm/%x-%j.out' in printed


@pytest.mark.parametrize('args, message', [
    (TRAINING_ARGS, 'missing --gpus-per-node (or the environment variable SIAMESE_GPUS_PER_NODE)'),
    (('--gpus-per-node=8', '--workdir=w'), 'missing --config'),
    (('--gpus-per-node=8', '--nodes=0', *TRAINING_ARGS), '--nodes must be a whole number above 0'),
    (('--gpus-per-node=8', '--spot', *TRAINING_ARGS), 'unknown option --spot'),
])
def test_slurm_bad_settings_fail_before_running_anything(args, message):
  result = launch('slurm', '--dry-run', *args)
  assert (result.returncode, result.stdout) == (2, '')
  assert message in result.stderr


# All scripts.


@pytest.mark.parametrize('script, option', [('tpu_vm', '--accelerator-type'), ('gpu_host', '--hosts'),
                                            ('slurm', '--gpus-per-node')])
def test_help_describes_the_options(script, option):
  result = launch(script, '--help')
  assert result.returncode == 0
  assert result.stdout.startswith(f'Usage: {script}.sh')
  for text in (option, '--config=PATH', '--workdir=DIR', '--dry-run', 'SIAMESE_'):
    assert text in result.stdout


def test_scripts_are_shellcheck_clean():
  if shutil.which('shellcheck') is None:
    pytest.skip('shellcheck is not installed (apt-get install shellcheck)')
  result = subprocess.run(['shellcheck', '--external-sources', *sorted(map(str, LAUNCH.glob('*.sh')))],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout
