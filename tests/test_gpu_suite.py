"""benchmarks/gpu_suite.sh on a CPU: its dry run finds every step and flag; its real run refuses without a GPU."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / 'benchmarks' / 'gpu_suite.sh'
pytestmark = pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')


def _run(*args, suite=SUITE, env=None, timeout=600, python=sys.executable):
    return subprocess.run(['bash', str(suite), *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, 'PYTHON': str(python), **(env or {})})


@pytest.fixture
def python(warm, tmp_path):
    """PYTHON for the dry runs: each script's --help from the warm parent, without importing torch anew."""
    return warm.executable(tmp_path)


@pytest.mark.slow
def test_dry_run_finds_every_step_and_flag(python):
    r = _run('--dry-run', python=python)
    assert r.returncode == 0, r.stdout + r.stderr
    steps = [line for line in r.stdout.splitlines() if line.startswith('[')]
    assert len(steps) >= 6 and r.stdout.count('  ok') == len(steps)
    for script in ('bench_loop.py --device cuda', 'time_to_accuracy.py --device cuda --recipe fast',
                   '--no-amp', '--compile', '-m pytest', '-m miniai train --device cuda'):
        assert script in r.stdout


def _fake_tree(tmp_path, tta_flags):
    """A copy of the suite beside stub scripts (argparse with the given flags), to see what the dry run rejects."""
    (tmp_path / 'benchmarks').mkdir()
    (tmp_path / 'tests').mkdir()
    shutil.copy(SUITE, tmp_path / 'benchmarks')
    stub = "import argparse; p = argparse.ArgumentParser()\nfor f in {!r}: p.add_argument(f)\np.parse_args()\n"
    (tmp_path / 'benchmarks' / 'bench_loop.py').write_text(stub.format(['--device', '--repeats', '--skip-hf']))
    (tmp_path / 'benchmarks' / 'time_to_accuracy.py').write_text(stub.format(tta_flags))
    (tmp_path / 'tests' / 'test_x.py').write_text("def test_runs_on_cuda(): pass\n")
    return tmp_path / 'benchmarks' / 'gpu_suite.sh'


def test_dry_run_reports_a_flag_the_script_does_not_accept(tmp_path, python):
    suite = _fake_tree(tmp_path, ['--device', '--recipe', '--seeds', '--json', '--no-amp', '--no-channels-last'])
    r = _run('--dry-run', suite=suite, python=python)                     # --compile is missing from the stub
    assert r.returncode != 0
    assert 'UNKNOWN FLAG: --compile' in r.stdout and 'some steps are broken' in r.stderr


def test_dry_run_reports_a_missing_script(tmp_path, python):
    suite = _fake_tree(tmp_path, [])
    (tmp_path / 'benchmarks' / 'bench_loop.py').unlink()
    r = _run('--dry-run', suite=suite, python=python)
    assert r.returncode != 0 and 'MISSING: benchmarks/bench_loop.py' in r.stdout


def _fake_bin(tmp_path, name, rc):
    d = tmp_path / 'bin'
    d.mkdir(exist_ok=True)
    (d / name).write_text(f'#!/bin/sh\nexit {rc}\n')
    (d / name).chmod(0o755)
    return d


def test_without_a_gpu_the_run_stops_at_once_with_a_clear_message(tmp_path):
    out = tmp_path / 'res.txt'
    d = _fake_bin(tmp_path, 'nvidia-smi', 9)               # a machine whose nvidia-smi finds no device
    r = _run('--out', str(out), env={'PATH': f"{d}:{os.environ['PATH']}"}, timeout=60)
    assert r.returncode == 2
    assert 'no NVIDIA GPU here' in r.stderr and '--dry-run' in r.stderr
    assert not out.exists()                                # nothing was run, so no results file


def test_a_torch_without_cuda_is_refused_even_if_nvidia_smi_sees_a_gpu(tmp_path):
    d = _fake_bin(tmp_path, 'nvidia-smi', 0)
    nocuda = _fake_bin(tmp_path, 'python-nocuda', 1)       # its cuda check fails
    r = _run('--out', str(tmp_path / 'res.txt'), timeout=60,
             env={'PATH': f"{d}:{os.environ['PATH']}", 'PYTHON': str(nocuda / 'python-nocuda')})
    assert r.returncode == 2 and 'torch.cuda.is_available() is False' in r.stderr


def test_unknown_argument_is_rejected_with_the_valid_ones():
    r = _run('--bogus', timeout=60)
    assert r.returncode == 64 and "unknown argument '--bogus'" in r.stderr and '--dry-run' in r.stderr
