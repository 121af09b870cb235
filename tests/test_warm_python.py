"""tools/warm_python.py: a process forked from the warm parent behaves, to whoever started it, as `python ...` would.

The zygote here imports nothing heavy, so these tests are quick; the suite's own zygote (conftest's `warm`) is the
same code with torch and miniai imported.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import load_tool


@pytest.fixture(scope='module')
def light():
    with load_tool('warm_python').warm_python(imports=['json']) as w: yield w


SCRIPT = """
import os, sys
print('argv', sys.argv, 'cwd', os.getcwd(), 'env', os.environ.get('WARM_TEST'), 'main', __name__)
print('to stderr', file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


def test_a_script_gets_its_arguments_folder_environment_streams_and_exit_status(light, tmp_path):
    (tmp_path / 's.py').write_text(SCRIPT)
    res = subprocess.run(light.command(str(tmp_path / 's.py'), '3', 'x y'), capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, 'WARM_TEST': 'here'}, timeout=60)
    assert res.returncode == 3
    assert res.stdout == f"argv ['{tmp_path / 's.py'}', '3', 'x y'] cwd {tmp_path} env here main __main__\n"
    assert res.stderr == 'to stderr\n'


def test_a_module_reads_its_stdin_and_its_exception_is_a_traceback_and_exit_status_1(light):
    res = subprocess.run(light.command('-m', 'json.tool'), input='{"a": [1]}', capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and res.stdout == '{\n    "a": [\n        1\n    ]\n}\n'
    res = subprocess.run(light.command('-m', 'json.tool'), input='{', capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and 'Expecting property name' in res.stderr


SLEEPER = """
import os, sys, time
try:      # the signal may come as soon as 'started' is out: not inside a buffered write, which it could leave locked
    os.write(1, b'started\\n')
    time.sleep(60)
except KeyboardInterrupt:
    print('interrupted', flush=True)
    raise
"""


def test_signals_reach_the_child_and_its_end_is_the_clients(light, tmp_path):
    (tmp_path / 'sleep.py').write_text(SLEEPER)
    for sig, out in ((signal.SIGINT, 'started\ninterrupted\n'), (signal.SIGTERM, 'started\n')):
        p = light.popen([str(tmp_path / 'sleep.py')], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.child_pid not in (None, p.pid)
        assert p.stdout.readline() == 'started\n'
        p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=30)
        assert p.returncode == -sig and 'started\n' + stdout == out, stderr
        if sig == signal.SIGINT: assert 'KeyboardInterrupt' in stderr


def test_killing_the_client_kills_the_child(light, tmp_path):
    (tmp_path / 'sleep.py').write_text(SLEEPER)
    p = light.popen([str(tmp_path / 'sleep.py')], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == 'started\n'
    p.kill()
    p.wait(timeout=30)
    deadline = time.time() + 10
    while os.path.exists(f'/proc/{p.child_pid}') and time.time() < deadline: time.sleep(0.05)
    assert not os.path.exists(f'/proc/{p.child_pid}')


def test_what_python_would_do_that_it_cannot_is_refused_with_a_message(light):
    res = subprocess.run(light.command('-c', 'print(1)'), capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and 'runs `-m MODULE ARGS...` or `SCRIPT ARGS...`' in res.stderr


def test_a_child_killed_outright_is_reported_as_python_reports_it(light, tmp_path):
    (tmp_path / 'sleep.py').write_text(SLEEPER)
    p = light.popen([str(tmp_path / 'sleep.py')], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == 'started\n'
    os.kill(p.child_pid, signal.SIGKILL)
    assert p.wait(timeout=30) == -signal.SIGKILL


def test_a_last_flush_into_a_closed_pipe_is_reported_with_status_120_as_python_does(light, tmp_path):
    (tmp_path / 'late.py').write_text("print('x' * 100)\n")          # still buffered when the script ends
    buffered = {k: v for k, v in os.environ.items() if k != 'PYTHONUNBUFFERED'}
    for cmd in ([sys.executable, str(tmp_path / 'late.py')], light.command(str(tmp_path / 'late.py'))):
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=buffered)
        p.stdout.close()                                              # the reader is gone
        err = p.stderr.read().decode()
        assert p.wait(timeout=30) == 120 and 'Exception ignored' in err and 'BrokenPipeError' in err, (cmd, err)


def test_a_client_gone_before_its_answer_leaves_the_parent_serving(light, tmp_path):
    import json
    import socket
    wp = load_tool('warm_python')
    (tmp_path / 's.py').write_text(SCRIPT)
    for _ in range(3):                                   # asks for a child, then hangs up without reading its pid
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(light.sock)
        req = json.dumps({'argv': [str(tmp_path / 'sleep.py')], 'cwd': str(tmp_path), 'env': {}}).encode()
        (tmp_path / 'sleep.py').write_text(SLEEPER)
        socket.send_fds(conn, [wp._HEADER.pack(len(req))], [0, 1, 2])
        conn.sendall(req)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\1\0\0\0\0\0\0\0')   # close with a reset
        conn.close()
    res = subprocess.run(light.command(str(tmp_path / 's.py'), '0'), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith('argv')


PARENT = """
import os, subprocess, sys
def say(*args): print(*args, flush=True)
say('forked', 'colorsys' in sys.modules, 'executable', sys.executable)       # only the zygote imported colorsys
for args in ([sys.argv[1]], ['-u', sys.argv[1]], ['-m', 'child']):
    subprocess.run([sys.executable, *args], check=True, cwd=os.path.dirname(sys.argv[1]))
subprocess.run([sys.executable, '-c', "import sys; print('-c forked', 'colorsys' in sys.modules)"], check=True)
r, w = os.pipe()                                    # a descriptor passed on: only a real process can keep it
subprocess.run([sys.executable, sys.argv[1], str(w)], check=True, pass_fds=(w,))
os.close(w)
say('through the passed descriptor:', os.read(r, 100).decode())
"""

CHILD = """
import os, sys
print('child forked', 'colorsys' in sys.modules, sys.executable == os.environ['WARM_PYTHON_EXECUTABLE'], flush=True)
if len(sys.argv) > 1: os.write(int(sys.argv[1]), b'written')
"""


def test_the_stand_in_executable_forks_scripts_and_is_passed_on_to_what_they_start(tmp_path):
    """With EXECUTABLE_VAR set, a child's sys.executable is the stand-in, so a Python it starts (a script, `-u
    SCRIPT`: torchrun's workers, `-m MODULE`) is forked too; what a forked child cannot be (`-c`, a start that passes
    a file descriptor) runs in a real interpreter."""
    with load_tool('warm_python').warm_python(imports=['colorsys']) as light:
        (tmp_path / 'parent.py').write_text(PARENT)
        (tmp_path / 'child.py').write_text(CHILD)
        exe = light.executable(tmp_path)
        assert light.EXECUTABLE_VAR == 'WARM_PYTHON_EXECUTABLE'
        res = subprocess.run([str(exe), str(tmp_path / 'parent.py'), str(tmp_path / 'child.py')],
                             capture_output=True, text=True, env={**os.environ, light.EXECUTABLE_VAR: str(exe)},
                             timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [f'forked True executable {exe}'] + ['child forked True True'] * 3 + [
        '-c forked False', 'child forked False False', 'through the passed descriptor: written']
