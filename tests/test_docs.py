"""The offline docs site (`tools/build_docs.py`) as a browser sees it: headless Chromium loads every page.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: NUL-separated JSON messages
on file descriptors 3 and 4), so the test needs no Python package and no chromedriver, only Debian's `chromium`.
On each page it checks that the page and everything it loads arrive (no failed request, no script error), that
every image has decoded (`naturalWidth > 0`), that the sidebar links every page, and that every link to a local
page or anchor resolves to a built file and an element id on it. The index page's screenshot is saved as
_docs/screenshot-index.png (its path is printed).

Without chromium the test is skipped, except under CI (`CI` set), where it fails: `apt-get install chromium`.
"""
import base64
import fcntl
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

from conftest import load_tool

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run',
         '--disable-dev-shm-usage', '--hide-scrollbars', '--remote-debugging-pipe']

# Runs in each page once it has loaded: waits for every image, then reports what the test checks.
PAGE_REPORT = """(async () => {
  const imgs = [...document.images];
  await Promise.all(imgs.map(im => im.complete ? null : new Promise(r => { im.onload = im.onerror = r; })));
  const all = sel => [...document.querySelectorAll(sel)];
  return {
    images: imgs.map(im => ({src: im.getAttribute('src'), ok: im.complete && im.naturalWidth > 0})),
    links: all('a[href]').map(a => ({href: a.getAttribute('href'), url: a.href})),
    ids: all('[id]').map(e => e.id).concat(all('a[name]').map(e => e.name)),
    sidebar: all('nav.sidebar a').map(a => a.getAttribute('href')),
    api_entries: all('.md-output h3').length,
    text: document.body.innerText.length,
  };
})()"""


def find_chromium():
    for name in ('chromium', 'chromium-browser', 'google-chrome', 'chrome'):
        if path := shutil.which(name): return path
    return None


def _high_fd(fd: int) -> int:
    """A copy of `fd` numbered 10 or more (the original is closed), so it can't already be 3 or 4."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Chromium:
    """A headless Chromium driven through the DevTools protocol on a pipe: `send` a command, get its result."""
    def __init__(self, exe: str, profile: str):
        to_chrome, self._w = os.pipe()
        self._r, from_chrome = os.pipe()
        to_chrome, from_chrome = _high_fd(to_chrome), _high_fd(from_chrome)
        # chromium reads commands on fd 3 and writes replies on fd 4: a python trampoline puts the pipe ends there
        trampoline = (f'import os, sys; os.dup2({to_chrome}, 3); os.dup2({from_chrome}, 4); os.close({to_chrome}); '
                      f'os.close({from_chrome}); os.execv(sys.argv[1], sys.argv[1:])')
        self._log = open(Path(profile) / 'chromium.log', 'w+b')   # a file: a full pipe would block chromium
        self.proc = subprocess.Popen([sys.executable, '-c', trampoline, exe, *FLAGS, f'--user-data-dir={profile}',
                                      'about:blank'], pass_fds=(to_chrome, from_chrome), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        os.close(to_chrome)
        os.close(from_chrome)
        self._id, self.events, self._inbox = 0, [], queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b''
        while chunk := os.read(self._r, 1 << 16):
            *msgs, buf = (buf + chunk).split(b'\0')
            for m in msgs: self._inbox.put(json.loads(m))
        self._inbox.put(None)                                  # the browser closed its end

    def _next(self, timeout: float, waiting_for: str) -> dict:
        try: m = self._inbox.get(timeout=timeout)
        except queue.Empty: raise TimeoutError(f"chromium sent no {waiting_for} within {timeout:.0f}s") from None
        if m is None:
            self._log.seek(0)
            raise RuntimeError(f"chromium exited: {self._log.read().decode(errors='replace')[-2000:]}")
        return m

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        """Send a command (to the browser, or to the page of `session`) and return its result."""
        self._id += 1
        msg = {'id': self._id, 'method': method, 'params': params or {}, **({'sessionId': session} if session else {})}
        os.write(self._w, json.dumps(msg).encode() + b'\0')
        while (m := self._next(timeout, f'reply to {method}')).get('id') != self._id: self.events.append(m)
        if 'error' in m: raise RuntimeError(f"{method}: {m['error']}")
        return m.get('result', {})

    def wait_event(self, method: str, session: str, timeout: float = 60) -> dict:
        """Wait for the event `method` of `session` (one received already counts)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e.get('method') == method and e.get('sessionId') == session: return self.events.pop(i)
            self.events.append(self._next(max(deadline - time.monotonic(), 0.01), method))

    def close(self):
        try: self.send('Browser.close', timeout=10)
        except (RuntimeError, TimeoutError, OSError): pass
        try: self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        self._log.close()


def open_page(browser: Chromium, url: str) -> tuple[str, str, dict, list]:
    """Load `url` in a new tab: (target id, session, PAGE_REPORT's result, problems: failed requests, JS errors)."""
    target = browser.send('Target.createTarget', {'url': 'about:blank'})['targetId']
    session = browser.send('Target.attachToTarget', {'targetId': target, 'flatten': True})['sessionId']
    for domain in ('Page', 'Network', 'Runtime'): browser.send(f'{domain}.enable', session=session)
    browser.send('Emulation.setDeviceMetricsOverride',
                 {'width': 1400, 'height': 900, 'deviceScaleFactor': 1, 'mobile': False}, session=session)
    browser.send('Page.navigate', {'url': url}, session=session)
    browser.wait_event('Page.loadEventFired', session)
    res = browser.send('Runtime.evaluate', {'expression': PAGE_REPORT, 'awaitPromise': True,
                                            'returnByValue': True}, session=session)
    if 'exceptionDetails' in res: raise RuntimeError(f"{url}: the check failed: {res['exceptionDetails']}")
    problems, urls = [], {}
    for e in (e for e in browser.events if e.get('sessionId') == session):
        p = e['params']
        if e['method'] == 'Network.requestWillBeSent': urls[p['requestId']] = p['request']['url']
        elif e['method'] == 'Network.loadingFailed' and not p.get('canceled'):
            problems.append(f"{urls.get(p['requestId'], 'a request')} failed: {p.get('errorText')}")
        elif e['method'] == 'Runtime.exceptionThrown':
            d = p['exceptionDetails']
            problems.append(f"script error: {d.get('exception', {}).get('description') or d.get('text')}")
    return target, session, res['result']['value'], problems


@pytest.fixture(scope='module')
def site():
    """Build the site from the committed notebooks into _docs/, with the documented command."""
    out = ROOT / '_docs'
    subprocess.run([sys.executable, str(ROOT / 'tools' / 'build_docs.py'), '--out', str(out)], check=True, cwd=ROOT)
    return out


@pytest.fixture(scope='module')
def browser():
    exe = find_chromium()
    if exe is None:
        msg = "chromium not found: `apt-get install chromium` (Debian) to test the docs site in a browser"
        if os.environ.get('CI'): pytest.fail(msg)
        pytest.skip(msg)
    with tempfile.TemporaryDirectory(prefix='miniai-chromium-') as profile:
        b = Chromium(exe, profile)
        try: yield b
        finally: b.close()


def test_every_page_loads_with_its_images_and_links(site, browser, tmp_path):
    page_name = load_tool('build_docs').page_name
    page_of = {nb: page_name(nb) for nb in sorted((ROOT / 'nbs').glob('*.ipynb'))}
    pages = sorted(site.glob('*.html'))
    assert {p.name for p in pages} == set(page_of.values()), "one page per notebook, named as nbdev names them"
    reports, problems = {}, []
    for page in pages:
        target, session, rep, errs = open_page(browser, page.as_uri())
        reports[page] = rep
        problems += [f"{page.name}: {e}" for e in errs]
        problems += [f"{page.name}: image {im['src']} did not load" for im in rep['images'] if not im['ok']]
        if not rep['text']: problems.append(f"{page.name}: the page is empty")
        if set(rep['sidebar']) != set(page_of.values()):
            problems.append(f"{page.name}: the sidebar links {sorted(set(rep['sidebar']))}, not every page")
        if page.name == 'index.html':
            shot = base64.b64decode(browser.send('Page.captureScreenshot', {'format': 'png'}, session=session)['data'])
            for dest in (site / 'screenshot-index.png', tmp_path / 'screenshot-index.png'): dest.write_bytes(shot)
            print(f"screenshot of the index page: {site / 'screenshot-index.png'}")
        browser.send('Target.closeTarget', {'targetId': target})
    ids = {page: set(rep['ids']) for page, rep in reports.items()}
    n_links = 0
    for page, rep in reports.items():
        for link in rep['links']:
            url, frag = urldefrag(link['url'])
            if urlparse(url).scheme != 'file': continue     # the web is not ours to check (and is offline here)
            n_links += 1
            target = Path(unquote(urlparse(url).path))
            if not target.exists(): problems.append(f"{page.name}: link {link['href']} -> missing {target}")
            elif frag and target.suffix == '.html' and unquote(frag) not in ids.get(target, set()):
                problems.append(f"{page.name}: link {link['href']} -> no id {frag!r} on {target.name}")
    assert not problems, '\n'.join(problems)
    assert n_links > len(pages) ** 2                     # every sidebar links every page
    # the module notebooks document their API with show_doc: its entries must be on their pages
    modules = [site / name for nb, name in page_of.items() if re.match(r'^\d+_(?!tut_)', nb.name)]
    without = [p.name for p in modules if reports[p]['api_entries'] == 0]
    assert modules and not without, f"module pages without an API entry: {without}"
    assert sum(len(r['images']) for r in reports.values()) > 0, "no plot on any page"


_NO_NOTEBOOK = {'miniai/__init__.py', 'miniai/__main__.py', 'miniai/cli.py', 'miniai/_modidx.py'}  # no API to explain


def test_module_docstrings_name_existing_notebooks():
    """Each module's docstring says which notebook explains it (STYLE.md section 6), and that notebook exists."""
    import ast
    problems = []
    for py in sorted((ROOT / 'miniai').rglob('*.py')):
        rel = py.relative_to(ROOT).as_posix()
        doc = ast.get_docstring(ast.parse(py.read_text())) or ''
        refs = re.findall(r'nbs/[\w.-]+\.ipynb', doc)
        problems += [f"{rel} names {r}, which does not exist" for r in refs if not (ROOT / r).exists()]
        if not refs and rel not in _NO_NOTEBOOK:
            problems.append(f"{rel}: its docstring names no notebook (\"Explained in nbs/NN_topic.ipynb.\")")
    assert not problems, '\n'.join(problems)
