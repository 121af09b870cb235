"""The docs site (`make docs`: mkdocs with mkdocs-material, mkdocs-jupyter and mkdocstrings) as a browser sees it.

The site is built offline into _docs/ with `mkdocs build` (as `make docs` does), then headless Chromium, driven over
the DevTools protocol on a pipe (`--remote-debugging-pipe`: NUL-separated JSON messages on file descriptors 3 and
4, so no Python package and no chromedriver is needed, only Debian's `chromium`), opens every page from the file
system. On each page it checks that the page and everything it loads arrive (no failed request, no script error,
nothing fetched from the network), that every image has decoded (`naturalWidth > 0`), that the navigation links
every page in the nav, that no code block scrolls sideways, and that every link to a local page or anchor
resolves to a built file and an id on it.
Then it types "OneCycle" into the search box and reads the result list, and it follows an API entry's source
link to check that it lands on the line that defines the name. The index page's screenshot is saved as
_docs/screenshot-index.png (its path is printed).

Without chromium the browser tests are skipped, except under CI (`CI` set), where they fail:
`apt-get install chromium`.
"""
import base64
import fcntl
import html
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

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run',
         '--disable-dev-shm-usage', '--hide-scrollbars', '--remote-debugging-pipe']

# Runs in each page once it has loaded: waits for every image, then reports what the test checks.
PAGE_REPORT = """(async () => {
  const imgs = [...document.images];
  await Promise.all(imgs.map(im => im.complete ? null : new Promise(r => { im.onload = im.onerror = r; })));
  const all = sel => [...document.querySelectorAll(sel)];
  return {
    images: imgs.map(im => ({src: (im.getAttribute('src') || '').slice(0, 80),
                              ok: im.complete && im.naturalWidth > 0})),
    links: all('a[href]').map(a => ({href: a.getAttribute('href'), url: a.href})),
    ids: all('[id]').map(e => e.id).concat(all('a[name]').map(e => e.name)),
    nav: all('nav.md-nav--primary a.md-nav__link[href]').map(a => a.href),
    show_doc: all('.jp-OutputArea h3, .jp-RenderedMarkdown h3').length,
    output_tables: all('.jp-OutputArea table').filter(t => t.querySelectorAll('td').length > 0).length,
    scripts: all('script[src]').map(s => s.src).concat(all('link[href]').map(l => l.href)),
    text: document.body.innerText.length,
    // code that scrolls sideways (the source pages keep their lines, and scroll, on purpose)
    wide_code: all('pre').filter(p => !p.closest('.source-listing') && p.scrollWidth > p.clientWidth + 2)
                         .map(p => p.innerText.split('\\n').sort((a, b) => b.length - a.length)[0].slice(0, 60)),
  };
})()"""

# Types `q` into the search box and waits (up to 20 s) for the result list: the result links, or an error text.
SEARCH = """(async q => {
  const input = document.querySelector('input[data-md-component=search-query]');
  if (!input) return {error: 'no search box'};
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const results = () => [...document.querySelectorAll('.md-search-result__item a[href]')];
  for (let i = 0; i < 100; i++) {
    input.focus();
    input.value = q;
    for (const t of ['focus', 'input', 'keyup']) input.dispatchEvent(new Event(t, {bubbles: true}));
    await sleep(200);
    if (results().length) { await sleep(300); return {hrefs: results().map(a => a.href)}; }
  }
  const meta = document.querySelector('.md-search-result__meta');
  return {error: 'no results: ' + (meta ? meta.innerText : 'no result list')};
})"""

# The text of line `n` on a source page (the element with id L-n) and whether the page scrolled to it.
SOURCE_LINE = """(() => {
  const id = decodeURIComponent(location.hash.slice(1));
  const el = document.getElementById(id);
  if (!el) return {error: 'no element with id ' + id};
  return {id, text: el.innerText, title: document.querySelector('h1') ? document.querySelector('h1').innerText : '',
          visible: el.getBoundingClientRect().top >= 0 && el.getBoundingClientRect().top < innerHeight};
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


def evaluate(browser: Chromium, session: str, expression: str, timeout: float = 60):
    """The value of the JS `expression` (awaited if it is a promise) in the page of `session`."""
    res = browser.send('Runtime.evaluate', {'expression': expression, 'awaitPromise': True, 'returnByValue': True},
                       session=session, timeout=timeout)
    if 'exceptionDetails' in res: raise RuntimeError(f"the check failed: {res['exceptionDetails']}")
    return res['result'].get('value')


def open_page(browser: Chromium, url: str) -> tuple[str, str, dict, list]:
    """Load `url` in a new tab: (target id, session, PAGE_REPORT's result, problems: failed or remote requests,
    JS errors)."""
    target = browser.send('Target.createTarget', {'url': 'about:blank'})['targetId']
    session = browser.send('Target.attachToTarget', {'targetId': target, 'flatten': True})['sessionId']
    for domain in ('Page', 'Network', 'Runtime'): browser.send(f'{domain}.enable', session=session)
    browser.send('Emulation.setDeviceMetricsOverride',
                 {'width': 1400, 'height': 900, 'deviceScaleFactor': 1, 'mobile': False}, session=session)
    browser.send('Page.navigate', {'url': url}, session=session)
    browser.wait_event('Page.loadEventFired', session)
    report = evaluate(browser, session, PAGE_REPORT)
    problems, urls = [], {}
    for e in (e for e in browser.events if e.get('sessionId') == session):
        p = e['params']
        if e['method'] == 'Network.requestWillBeSent':
            urls[p['requestId']] = u = p['request']['url']
            if urlparse(u).scheme not in ('file', 'data', 'about', 'blob'): problems.append(f"fetches {u[:100]}")
        elif e['method'] == 'Network.loadingFailed' and not p.get('canceled'):
            problems.append(f"{urls.get(p['requestId'], 'a request')} failed: {p.get('errorText')}")
        elif e['method'] == 'Runtime.exceptionThrown':
            d = p['exceptionDetails']
            problems.append(f"script error: {d.get('exception', {}).get('description') or d.get('text')}")
    return target, session, report, problems


def close_page(browser: Chromium, target: str, session: str):
    browser.send('Target.closeTarget', {'targetId': target})
    browser.events[:] = [e for e in browser.events if e.get('sessionId') != session]


def page_of(nb: Path) -> str:
    """The page of notebook `nb`, named as nbdev names it: `02_learner.ipynb` -> `learner.html`."""
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', nb.name.lower()).removesuffix('.ipynb') + '.html'


def public_names() -> dict[str, list[str]]:
    """Each module's dotted name -> its `__all__` (read from the source), for the modules with an API page."""
    import ast
    out = {}
    for py in sorted((ROOT / 'miniai').rglob('*.py')):
        parts = py.relative_to(ROOT).with_suffix('').parts
        if parts[-1] in ('__main__', '_modidx') or parts == ('miniai', '__init__'): continue
        if parts[-1] == '__init__': parts = parts[:-1]
        names = next((ast.literal_eval(n.value) for n in ast.parse(py.read_text()).body if isinstance(n, ast.Assign)
                      and any(getattr(t, 'id', None) == '__all__' for t in n.targets)), [])
        out['.'.join(parts)] = names
    return out


@pytest.fixture(scope='module')
def site():
    """Build the site into _docs/ with the documented command (`make docs` runs the same `mkdocs build`)."""
    out = ROOT / '_docs'
    env = {**os.environ, 'NO_MKDOCS_2_WARNING': '1'}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--quiet', '--site-dir', str(out)], check=True,
                   cwd=ROOT, env=env)
    print(f"mkdocs build: {time.perf_counter() - t0:.1f}s")
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


@pytest.mark.slow
def test_every_page_loads_with_its_images_and_links(site, browser, tmp_path):
    notebooks = sorted((ROOT / 'nbs').glob('*.ipynb'))
    pages = sorted(p for p in site.rglob('*.html') if p.name != '404.html')
    names = {p.relative_to(site).as_posix() for p in pages}
    assert {page_of(nb) for nb in notebooks} <= names, "one page per notebook, named as nbdev names them"
    assert {f"api/{m.removeprefix('miniai.')}.html" for m in public_names()} <= names, "an API page per module"
    assert {p.with_suffix('.html').name for p in (ROOT / 'docs').glob('*.md')} <= names, "a page per docs/*.md"
    reports, problems = {}, []
    for page in pages:
        target, session, rep, errs = open_page(browser, page.as_uri())
        reports[page] = rep
        name = page.relative_to(site).as_posix()
        problems += [f"{name}: {e}" for e in errs]
        problems += [f"{name}: image {im['src']} did not load" for im in rep['images'] if not im['ok']]
        if not rep['text']: problems.append(f"{name}: the page is empty")
        problems += [f"{name}: code scrolls sideways instead of wrapping: {line!r}" for line in rep['wide_code']]
        if page.name == 'index.html' and page.parent == site:
            shot = base64.b64decode(browser.send('Page.captureScreenshot', {'format': 'png'}, session=session)['data'])
            for dest in (site / 'screenshot-index.png', tmp_path / 'screenshot-index.png'): dest.write_bytes(shot)
            print(f"screenshot of the index page: {site / 'screenshot-index.png'}")
        close_page(browser, target, session)
    # the nav (the same on every page) lists every notebook, docs/ page and API page
    nav = {Path(unquote(urlparse(u).path)) for u in reports[site / 'index.html']['nav']}
    listed = {p for p in pages if not p.relative_to(site).as_posix().startswith('source/')}
    if not listed <= nav: problems.append(f"the nav misses {sorted(str(p.relative_to(site)) for p in listed - nav)}")
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
                problems.append(f"{page.relative_to(site)}: link {link['href']} -> no id {frag!r} on {target.name}")
    assert not problems, '\n'.join(problems)
    assert n_links > len(pages) * len(listed) // 2        # every page's nav links every listed page
    # the module notebooks document their API with show_doc: its entries must be on their pages, without the call
    modules = [site / page_of(nb) for nb in notebooks if re.match(r'^\d+_(?!tut_)', nb.name)]
    without = [p.name for p in modules if reports[p]['show_doc'] == 0]
    assert modules and not without, f"module pages without a show_doc entry: {without}"
    assert sum(len(r['images']) for r in reports.values()) > 0, "no plot on any page"
    assert reports[site / 'index.html']['output_tables'] > 0, "the first fit's metrics table is not on the index page"


@pytest.mark.slow
def test_hidden_cells_are_not_shown(site):
    """`#| hide` cells (imports, warning filters) are left out; `show_doc(...)` calls show only their entry."""
    import nbformat
    checked = 0
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        text = html.unescape(re.sub(r'<[^>]+>', '', (site / page_of(nb)).read_text()))
        cells = [c for c in nbformat.read(nb, as_version=4).cells if c.cell_type == 'code']
        def code(c): return '\n'.join(ln for ln in c.source.splitlines() if not ln.lstrip().startswith('#|')).strip()
        def hidden(c): return bool(re.search(r'^\s*#\|\s*hide\s*$', c.source, re.M)) or code(c).startswith('show_doc')
        shown = '\n'.join(code(c) for c in cells if not hidden(c))
        for c in cells:
            if hidden(c) and code(c) and code(c) not in shown:     # (a line shown elsewhere too proves nothing)
                assert code(c) not in text, f"{page_of(nb)} shows a hidden cell of {nb.name}: {code(c)[:80]!r}"
                checked += 1
    assert checked, "no notebook has a `#| hide` or show_doc cell to check"


@pytest.mark.slow
def test_api_reference_lists_every_public_name_with_a_source_link(site):
    """Every name in every module's `__all__` has an entry (heading id `miniai.mod.name`) with a source link."""
    problems = []
    for mod, names in public_names().items():
        page = (site / 'api' / f"{mod.removeprefix('miniai.')}.html").read_text()
        for name in names:
            m = re.search(rf'<h\d id="{re.escape(mod)}\.{re.escape(name)}"[^>]*>(.*?)</h\d>', page, re.S)
            if m is None: problems.append(f"{mod}: no entry for {name}")
            elif 'doc-source-link' not in m[1]: problems.append(f"{mod}.{name}: no source link")
    assert not problems, '\n'.join(problems)


@pytest.mark.slow
def test_search_finds_the_schedules_page(site, browser):
    """Typing "OneCycle" in the search box lists the schedules pages (the search index runs offline, in the page)."""
    target, session, _, errs = open_page(browser, (site / 'index.html').as_uri())
    try:
        res = evaluate(browser, session, f"({SEARCH})('OneCycle')", timeout=60)
    finally: close_page(browser, target, session)
    assert 'error' not in res, res.get('error')
    pages = {Path(unquote(urlparse(u).path)).relative_to(site).as_posix() for u in res['hrefs']}
    assert 'tut_schedulers.html' in pages or 'api/sgd.schedules.html' in pages, f"results: {sorted(pages)}"
    assert not errs, errs


@pytest.mark.slow
def test_source_link_opens_the_defining_line(site, browser):
    """An API entry's [source] link opens the module's source page at the line that defines the name."""
    cases = [('sgd.schedules', 'miniai.sgd.schedules.OneCycle', 'class OneCycle'),
             ('learner', 'miniai.learner.Learner', 'class Learner'),          # re-exported: its defining file
             ('sgd', 'miniai.sgd.sched_cos', 'def sched_cos')]
    for page, ident, defines in cases:
        html_text = (site / 'api' / f'{page}.html').read_text()
        link = r'class="doc-source-link" href="([^"]+)" title="([^":]+):(\d+)"'
        m = re.search(rf'<h\d id="{re.escape(ident)}".*?{link}', html_text, re.S)
        assert m, f"no source link for {ident} on api/{page}.html"
        file, lineno = m[2], m[3]
        url = (site / 'api' / m[1]).resolve().as_uri() if '#' not in m[1] else \
            (site / 'api' / m[1].split('#')[0]).resolve().as_uri() + '#' + m[1].split('#')[1]
        target, session, _, errs = open_page(browser, url)
        try: line = evaluate(browser, session, SOURCE_LINE)
        finally: close_page(browser, target, session)
        assert not errs and 'error' not in line, (url, errs, line)
        number = re.match(r'\s*(\d+)', line['text'])
        assert number and line['id'] == f"L-{number[1]}", f"{url}: the line shows number {line['text'][:8]!r}"
        assert re.sub(r'^\s*\d+', '', line['text']).strip().startswith(defines), f"{url} shows {line['text']!r}"
        assert line['visible'], f"{url}: the browser did not scroll to the line"
        assert line['title'].rstrip('¶').strip() == file, f"{url} is the page of {line['title']!r}, not {file}"
        assert line['id'] == f'L-{lineno}', f"{url}: the link's title says line {lineno}"


_NO_NOTEBOOK = {'miniai/__init__.py', 'miniai/__main__.py', 'miniai/cli.py', 'miniai/_modidx.py'}  # no API to explain


def test_module_docstrings_name_existing_notebooks():
    """Each module's docstring says which notebook explains it (STYLE.md section 6), and that notebook exists."""
    import ast
    problems = []
    for py in sorted((ROOT / 'miniai').rglob('*.py')):
        rel = py.relative_to(ROOT).as_posix()
        doc = ast.get_docstring(ast.parse(py.read_text())) or ''
        refs = re.findall(r'(?:nbs/[\w.-]+\.ipynb|docs/[\w.-]+\.md)', doc)   # a notebook, or a page of docs/
        problems += [f"{rel} names {r}, which does not exist" for r in refs if not (ROOT / r).exists()]
        if not refs and rel not in _NO_NOTEBOOK:
            problems.append(f"{rel}: its docstring names no notebook (\"Explained in nbs/NN_topic.ipynb.\")")
    assert not problems, '\n'.join(problems)
