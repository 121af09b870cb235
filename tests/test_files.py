"""read_regular and sha256_file read only regular files, bounded: anything else is named and refused, not waited on."""
import contextlib
import errno
import hashlib
import os
import signal

import pytest

from miniai.errors import MiniaiError
from miniai.files import InputFileError, open_regular, read_regular, sha256_file


class Blocked(Exception):
    """Raised by `deadline`; not an OSError, so no `except OSError` in the code under test can swallow it."""


@contextlib.contextmanager
def deadline(seconds=10):
    """Fail (instead of hanging the suite) when the block blocks for longer than `seconds`."""
    def stop(*_): raise Blocked(f"still blocked after {seconds} s")
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try: yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def make(kind, path):
    """Put a `kind` of thing at `path`: a FIFO, a link to /dev/zero, a directory, a dangling link."""
    if kind == 'fifo': os.mkfifo(path)
    elif kind == 'devzero': os.symlink('/dev/zero', path)
    elif kind == 'dir': path.mkdir()
    elif kind == 'dangling': os.symlink(path.parent / 'nowhere', path)


SAYS = {'fifo': 'is a named pipe (FIFO), not a regular file',
        'devzero': 'is a character device (such as /dev/zero), not a regular file',
        'dir': 'is a directory, not a regular file'}


@pytest.mark.parametrize('kind', list(SAYS))
def test_what_is_not_a_regular_file_is_named_and_refused_without_blocking(tmp_path, kind):
    path = tmp_path / 'x.sha256'
    make(kind, path)
    for read in (lambda: read_regular(path, 4096, what='the digest file', advice='delete it'),
                 lambda: sha256_file(path, what='the digest file')):
        with deadline(), pytest.raises(InputFileError) as ei: read()
        msg = str(ei.value)
        assert msg.startswith(f'the digest file {path} {SAYS[kind]}')
        assert isinstance(ei.value, MiniaiError) and isinstance(ei.value, OSError)


def test_a_regular_file_is_read_whole_and_a_symlink_to_one_is_followed(tmp_path):
    (tmp_path / 'a').write_bytes(b'abc\n')
    os.symlink(tmp_path / 'a', tmp_path / 'link')
    assert read_regular(tmp_path / 'a') == read_regular(tmp_path / 'link', max_bytes=4) == b'abc\n'
    assert sha256_file(tmp_path / 'link') == hashlib.sha256(b'abc\n').hexdigest()
    with open_regular(tmp_path / 'a') as f: assert f.read() == b'abc\n'


def test_a_file_over_the_bound_is_refused_with_its_size(tmp_path):
    (tmp_path / 'big').write_bytes(b'0' * 5000)
    with pytest.raises(InputFileError, match=r'big is 5,000 bytes, more than the 4,096 such a file can hold; shorten'):
        read_regular(tmp_path / 'big', 4096, advice='shorten it')
    assert read_regular(tmp_path / 'big', 5000) == b'0' * 5000


def test_a_missing_file_is_file_not_found_and_errors_take_the_callers_class(tmp_path):
    with pytest.raises(FileNotFoundError): read_regular(tmp_path / 'missing')
    make('dangling', tmp_path / 'dangling')
    with pytest.raises(FileNotFoundError): read_regular(tmp_path / 'dangling')
    class Mine(ValueError): pass
    make('fifo', tmp_path / 'p')
    with deadline(), pytest.raises(Mine, match='named pipe'): read_regular(tmp_path / 'p', error=Mine)


@pytest.mark.parametrize('err,cause,advice', [
    (errno.ENOSPC, 'no space left on device', 'free some space'),
    (errno.EACCES, 'permission denied', 'folder you may write to'),
    (errno.EROFS, 'read-only file system', 'not mounted read-only')])
def test_a_failed_write_names_the_file_its_cause_and_advice_for_that_cause(tmp_path, monkeypatch, err, cause,
                                                                           advice):
    from miniai.errors import OutputError
    from miniai.files import atomic_write
    path = tmp_path / 'model.pt'
    path.write_bytes(b'old')
    def failing(src, dst): raise OSError(err, os.strerror(err))
    monkeypatch.setattr(os, 'replace', failing)
    with pytest.raises(OutputError) as e: atomic_write(path, b'new')
    msg = str(e.value)
    assert str(path) in msg and cause in msg.lower() and advice in msg
    assert ('free some space' in msg) == (err == errno.ENOSPC)       # never the wrong advice
    assert path.read_bytes() == b'old' and [p.name for p in tmp_path.iterdir()] == ['model.pt']
