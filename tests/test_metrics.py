"""`miniai.metrics` imports torcheval without torch's `torch.jit.script` FutureWarning, and hides nothing else."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JIT = '`torch.jit.script` is deprecated'


def run(code: str) -> str:
    """stderr of `code` in a fresh interpreter that shows every warning."""
    env_path = str(ROOT)
    res = subprocess.run([sys.executable, '-W', 'default', '-c', code], capture_output=True, text=True, cwd=ROOT,
                         env={'PYTHONPATH': env_path, 'PATH': '/usr/bin:/bin', 'OMP_NUM_THREADS': '1'}, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stderr


def test_torcheval_import_is_silent_after_miniai_metrics():
    if JIT not in run('import torcheval.metrics'):
        pytest.skip("this torch/torcheval pair raises no torch.jit.script warning: nothing to silence")
    err = run('from miniai.metrics import MulticlassAccuracy; from torcheval.metrics import Mean; '
              'import torcheval.metrics as tm; assert MulticlassAccuracy is tm.MulticlassAccuracy')
    assert JIT not in err, err


def test_other_warnings_still_show():
    err = run('import warnings; from miniai.metrics import torcheval_metrics; torcheval_metrics(); '
              'warnings.warn("`torch.jit.script` is deprecated, said someone else", UserWarning); '
              'warnings.warn("something else", FutureWarning)')
    assert 'said someone else' in err and 'something else' in err, err
