"""`miniai.metrics` imports torcheval without torch's `torch.jit.script` FutureWarning, and hides nothing else.

Each case needs an interpreter that has not imported torcheval yet and shows every warning (`-W default`). They run
in children forked from one such interpreter after it has imported torch and torchvision (which torcheval imports),
the slow part of the start-up that every case shares, without a warning of their own; each child then imports
torcheval afresh, as a new process would.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JIT = '`torch.jit.script` is deprecated'

# Runs each case of argv[1] (name -> code) in a forked child; prints {name: [exit code, the child's stderr]}.
FORKS = r'''
import json, os, sys, tempfile, traceback
import torch, torchvision
out = {}
for name, code in json.loads(sys.argv[1]).items():
    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:
            os.dup2(err.fileno(), 2)
            try: exec(code, {'__name__': '__main__'}); rc = 0
            except BaseException: traceback.print_exc(); rc = 1
            sys.stderr.flush()
            os._exit(rc)
        _, status = os.waitpid(pid, 0)
        err.seek(0)
        out[name] = [os.waitstatus_to_exitcode(status), err.read().decode()]
print(json.dumps(out))
'''

CASES = {
    'torcheval alone': 'import torcheval.metrics',
    # miniai.metrics first, then warnings of others (one of them quoting torch's), which must still show
    'after miniai.metrics': 'from miniai.metrics import MulticlassAccuracy; from torcheval.metrics import Mean; '
                            'import torcheval.metrics as tm; assert MulticlassAccuracy is tm.MulticlassAccuracy; '
                            'import warnings; '
                            'warnings.warn("`torch.jit.script` is deprecated, said someone else", FutureWarning); '
                            'warnings.warn("something else", FutureWarning)',
}


@pytest.fixture(scope='module')
def stderr_of():
    """Each case's stderr, from a fresh interpreter that shows every warning."""
    res = subprocess.run([sys.executable, '-W', 'default', '-c', FORKS, json.dumps(CASES)], capture_output=True,
                         text=True, cwd=ROOT, timeout=180,
                         env={'PYTHONPATH': str(ROOT), 'PATH': '/usr/bin:/bin', 'OMP_NUM_THREADS': '1'})
    assert res.returncode == 0, res.stderr
    assert JIT not in res.stderr, "importing torch or torchvision warns already: the cases could not see it again"
    out = json.loads(res.stdout)
    for name, (rc, err) in out.items(): assert rc == 0, f"{name}:\n{err}"
    return {name: err for name, (_, err) in out.items()}


@pytest.mark.slow
def test_torcheval_import_is_silent_after_miniai_metrics(stderr_of):
    if JIT not in stderr_of['torcheval alone']:
        pytest.skip("this torch/torcheval pair raises no torch.jit.script warning: nothing to silence")
    torchs = [line for line in stderr_of['after miniai.metrics'].splitlines()
              if JIT in line and 'said someone else' not in line]
    assert not torchs, stderr_of['after miniai.metrics']


@pytest.mark.slow
def test_other_warnings_still_show(stderr_of):
    err = stderr_of['after miniai.metrics']
    assert 'said someone else' in err and 'something else' in err, err
