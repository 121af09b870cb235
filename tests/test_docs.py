"""The docs site (`make docs`: mkdocs with mkdocs-material, mkdocs-jupyter and mkdocstrings) as a browser sees it.

The site is built once, offline, into _docs/ with `mkdocs build` (as `make docs` does), then headless Chromium,
driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: NUL-separated JSON messages on file
descriptors 3 and 4, so no Python package and no chromedriver is needed, only Debian's `chromium`), opens every page
from the file system at 1400 px, once, and reports what the tests below check:

- every page arrives with everything it loads (no failed request, no script error, nothing from the network),
  every image decoded, no code block scrolling sideways, every local link and anchor resolving. The generated API
  and source pages whose scripts are those of a page of their folder already run are opened without scripts
  (`reports`): for them "no script error" is that first page's;
- the nav: every page is in it, or is a source page linked from the API index that is; it starts with the pages
  (not the site's name twice); every page has a previous/next footer; the header links the repository named in
  pyproject.toml; the build reports no page left out of the nav and no warning;
- `show_doc` entries on the notebook pages: each name a notebook documents is rendered as what Python says it is
  (a class as a class, with its constructor's parameters, its docstring and a link to the line that defines it);
  no signature anywhere reads `NoneType`;
- no test plumbing on any notebook page (quick mode, the show_doc import, warning filters, `#|` directives), and
  no `#| hide` cell or `#|hide_line` line;
- API pages: each starts with one of its module's `__all__` names that has a docstring (`api/learner` with
  `Learner`), lists every `__all__` name with a source link, and no class member without a docstring;
- search: typing "OneCycle" in the search box lists the schedules pages; a `[source]` link lands on its line.

The index page's screenshot is saved as _docs/screenshot-index.png (its path is printed). Without chromium the
browser tests are skipped, except under CI (`CI` set), where they fail: `apt-get install chromium`.
"""
import ast
import base64
import fcntl
import html
import inspect
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

# Runs in each page once it has loaded: waits for every image, then reports what the tests check.
PAGE_REPORT = """(async () => {
  const imgs = [...document.images];
  await Promise.all(imgs.map(im => im.complete ? null : new Promise(r => { im.onload = im.onerror = r; })));
  const all = sel => [...document.querySelectorAll(sel)];
  const text = (el, drop) => {            // the visible text of `el` without its parts matching `drop`
    if (!el) return '';
    const copy = el.cloneNode(true);
    if (drop) copy.querySelectorAll(drop).forEach(e => e.remove());
    return copy.textContent.replace(/\\s+/g, ' ').trim();
  };
  const kind = el => [...((el && el.classList) || [])].filter(c => /^doc-symbol-/.test(c) && c !== 'doc-symbol-heading')
                       .map(c => c.slice(11))[0] || '';
  const shown = el => el.offsetParent !== null && getComputedStyle(el).visibility !== 'hidden';
  return {
    images: imgs.map(im => ({src: (im.getAttribute('src') || '').slice(0, 80),
                              ok: im.complete && im.naturalWidth > 0})),
    links: all('a[href]').map(a => ({href: a.getAttribute('href'), url: a.href})),
    ids: all('[id]').map(e => e.id).concat(all('a[name]').map(e => e.name)),
    nav: all('nav.md-nav--primary a.md-nav__link[href]').map(a => a.href),
    nav_start: all('nav.md-nav--primary .md-nav__title, nav.md-nav--primary .md-nav__link')
                 .filter(e => shown(e) && e.innerText.trim()).slice(0, 2).map(e => e.innerText.trim()),
    prev: (document.querySelector('a.md-footer__link--prev') || {}).href || null,
    next: (document.querySelector('a.md-footer__link--next') || {}).href || null,
    repo: all('.md-header a.md-source').map(a => a.getAttribute('href')),
    show_doc: all('.jp-OutputArea h3, .jp-RenderedMarkdown h3').length,
    entries: all('.jupyter-wrapper .show-doc').map(d => ({
      name: text(d.querySelector('.doc-object-name')), kind: kind(d.querySelector('.doc-symbol')),
      sig: (d.querySelector('.doc-signature') || {}).innerText || '',
      src: (d.querySelector('.doc-source-link') || {getAttribute: () => ''}).getAttribute('href'),
      doc: text(d.querySelector('.doc-contents'), '.doc-class-bases')})),
    api: all('.doc-object').filter(o => o.querySelector(':scope > .doc-heading[id^="miniai."]')).map(o => {
      const h = o.querySelector(':scope > .doc-heading'), up = o.parentElement.closest('.doc-object');
      const uph = up && up.querySelector(':scope > .doc-heading');
      return {id: h.id, kind: kind(h.querySelector('.doc-symbol')), parent: uph ? uph.id : null,
              doc: text(o.querySelector(':scope > .doc-contents'), '.doc-children, .doc-signature, .doc-labels')};
    }),
    signatures: all('.doc-signature').map(e => e.innerText),
    code: all('.jp-CodeCell .jp-InputArea').map(e => e.innerText),
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


def new_tab(browser: Chromium) -> tuple[str, str]:
    """A new tab at 1400 px with its page, network and runtime events on: (target id, session)."""
    target = browser.send('Target.createTarget', {'url': 'about:blank'})['targetId']
    session = browser.send('Target.attachToTarget', {'targetId': target, 'flatten': True})['sessionId']
    for domain in ('Page', 'Network', 'Runtime'): browser.send(f'{domain}.enable', session=session)
    browser.send('Emulation.setDeviceMetricsOverride',
                 {'width': 1400, 'height': 900, 'deviceScaleFactor': 1, 'mobile': False}, session=session)
    return target, session


def visit(browser: Chromium, session: str, url: str) -> tuple[dict, list]:
    """Load `url` in the tab of `session`: (PAGE_REPORT's result, problems: failed or remote requests, JS errors)."""
    browser.events[:] = [e for e in browser.events if e.get('sessionId') != session]   # the last page's events
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
    return report, problems


def open_page(browser: Chromium, url: str) -> tuple[str, str, dict, list]:
    """Load `url` in a new tab: (target id, session, PAGE_REPORT's result, problems as `visit` gives them)."""
    target, session = new_tab(browser)
    return (target, session, *visit(browser, session, url))


def close_page(browser: Chromium, target: str, session: str):
    browser.send('Target.closeTarget', {'targetId': target})
    browser.events[:] = [e for e in browser.events if e.get('sessionId') != session]


def page_of(nb: Path) -> str:
    """The page of notebook `nb`, named as nbdev names it: `02_learner.ipynb` -> `learner.html`."""
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', nb.name.lower()).removesuffix('.ipynb') + '.html'


NOTEBOOKS = sorted((ROOT / 'nbs').glob('*.ipynb'))
MODULE_NOTEBOOKS = [nb for nb in NOTEBOOKS if re.match(r'^\d+_(?!tut_)', nb.name)]


def public_names() -> dict[str, list[str]]:
    """Each module's dotted name -> its `__all__` (read from the source), for the modules with an API page."""
    out = {}
    for py in sorted((ROOT / 'miniai').rglob('*.py')):
        parts = py.relative_to(ROOT).with_suffix('').parts
        if parts[-1] == '__init__': parts = parts[:-1]
        elif parts[-1].startswith('_'): continue
        if len(parts) == 1 or any(p.startswith('_') for p in parts): continue
        value = next((n.value for n in ast.parse(py.read_text()).body if isinstance(n, ast.Assign)
                      and any(getattr(t, 'id', None) == '__all__' for t in n.targets)), None)
        try: names = ast.literal_eval(value) if value is not None else []
        except ValueError: names = []   # computed (miniai.imports gathers other modules' names): a docstring page
        out['.'.join(parts)] = names
    return out


def code_cells(nb: Path) -> list[str]:
    return [''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code']


def is_hidden(src: str) -> bool: return bool(re.search(r'^\s*#\|\s*hide\s*$', src, re.M))


# The test plumbing a reader of a notebook page must not see: quick mode, the show_doc import, warning filters
PLUMBING = re.compile(r"MINIAI_QUICK|\bif (not )?quick\b|\bquick\s*=|\bquick else\b|nbdev\.showdoc|filterwarnings|"
                      r"^\s*#\|", re.M)


@pytest.fixture(scope='session')
def build():
    """Build the site into _docs/ with the documented command (`make docs` runs the same `mkdocs build`), once:
    (the site's folder, the build's log)."""
    out = ROOT / '_docs'
    env = {**os.environ, 'NO_MKDOCS_2_WARNING': '1'}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--site-dir', str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, f"mkdocs build failed:\n{res.stderr[-5000:]}"
    print(f"mkdocs build: {time.perf_counter() - t0:.1f}s")
    return out, res.stderr + res.stdout


@pytest.fixture(scope='session')
def site(build): return build[0]


@pytest.fixture(scope='session')
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


SCRIPT = re.compile(r'<script\b[^>]*>.*?</script>', re.S)
GENERATED = ('api', 'source')      # the site's folders of generated pages: an API page and a source page per module


def scripts_of(page: Path) -> list[str]:
    """The `<script>` elements of `page`'s HTML, as written."""
    return SCRIPT.findall(page.read_text(encoding='utf-8'))


@pytest.fixture(scope='session')
def reports(site, browser):
    """Every page opened once, one after another in one tab: ({page: PAGE_REPORT's result}, [problems with loading
    it]).

    The generated pages (GENERATED: over a hundred pages, where the theme's scripts took half of the time of
    opening every page) run their scripts only where those differ from every page of the same folder already run
    with scripts: most carry exactly the scripts of their folder's first page, which has run them without an
    error, and none of their own. Run without scripts, such a page reports what it reports with them, but for
    the ids and text of the code blocks' copy buttons; an error that the theme's scripts would raise only on
    the content of one of those pages goes unseen. The notebook and docs pages all run their scripts."""
    out, problems = {}, []
    target, session = new_tab(browser)          # one tab for all: a new tab per page costs a renderer start-up
    ran, scripts_off = {}, False                # folder -> the script sets its pages have run; the tab's state
    for page in sorted(p for p in site.rglob('*.html') if p.name != '404.html'):
        scripts, ran_here = scripts_of(page), ran.setdefault(page.parent, [])
        off = page.relative_to(site).parts[0] in GENERATED and scripts in ran_here
        if not off: ran_here.append(scripts)
        if off != scripts_off:
            browser.send('Emulation.setScriptExecutionDisabled', {'value': off}, session=session)
            scripts_off = off
        rep, errs = visit(browser, session, page.as_uri())
        out[page] = rep
        problems += [f"{page.relative_to(site)}: {e}" for e in errs]
        if page == site / 'index.html':
            shot = base64.b64decode(browser.send('Page.captureScreenshot', {'format': 'png'}, session=session)['data'])
            (site / 'screenshot-index.png').write_bytes(shot)
            print(f"screenshot of the index page: {site / 'screenshot-index.png'}")
    close_page(browser, target, session)
    return out, problems


@pytest.mark.slow
def test_every_page_loads_with_its_images_and_links(site, reports):
    reports, problems = reports
    pages = sorted(reports)
    names = {p.relative_to(site).as_posix() for p in pages}
    assert {page_of(nb) for nb in NOTEBOOKS} <= names, "one page per notebook, named as nbdev names them"
    assert {f"api/{m.removeprefix('miniai.')}.html" for m in public_names()} <= names, "an API page per module"
    assert {p.with_suffix('.html').name for p in (ROOT / 'docs').glob('*.md')} <= names, "a page per docs/*.md"
    problems = list(problems)
    for page, rep in reports.items():
        name = page.relative_to(site).as_posix()
        problems += [f"{name}: image {im['src']} did not load" for im in rep['images'] if not im['ok']]
        if not rep['text']: problems.append(f"{name}: the page is empty")
        problems += [f"{name}: code scrolls sideways instead of wrapping: {line!r}" for line in rep['wide_code']]
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
    assert n_links > len(pages) * 20                       # every page's nav links every listed page
    # the module notebooks document their API with show_doc: its entries must be on their pages, without the call
    without = [page_of(nb) for nb in MODULE_NOTEBOOKS if reports[site / page_of(nb)]['show_doc'] == 0]
    assert MODULE_NOTEBOOKS and not without, f"module pages without a show_doc entry: {without}"
    assert sum(len(r['images']) for r in reports.values()) > 0, "no plot on any page"
    assert reports[site / 'index.html']['output_tables'] > 0, "the first fit's metrics table is not on the index page"


@pytest.mark.slow
def test_nav_footer_and_repository_link(site, build, reports):
    """Every page is in the nav (a source page: linked from the API index, which is); the nav starts with the
    pages, not the site's name twice; previous/next links; the header links pyproject.toml's repository."""
    reports, _ = reports
    log = build[1]
    assert 'not included in the "nav"' not in log and 'WARNING' not in log, f"the build says:\n{log[-3000:]}"
    index = reports[site / 'index.html']
    nav = {Path(unquote(urlparse(u).path)) for u in index['nav']}
    sources = {p for p in reports if p.relative_to(site).parts[0] == 'source'}
    missing = sorted(str(p.relative_to(site)) for p in set(reports) - sources - nav)
    assert not missing, f"pages not in the nav: {missing}"
    api_index = site / 'api' / 'index.html'
    assert api_index in nav, "the API index is not in the nav"
    linked = {Path(unquote(urlparse(urldefrag(link['url'])[0]).path)) for link in reports[api_index]['links']}
    assert sources and sources <= linked, f"source pages the API index does not link: {sorted(sources - linked)}"
    site_name = re.search(r'^site_name:\s*(.+)$', (ROOT / 'mkdocs.yml').read_text(), re.M)[1].strip()
    problems = []
    order = [p for p in (Path(unquote(urlparse(u).path)) for u in index['nav'])]
    order = list(dict.fromkeys(order))                       # the reading order the footer follows
    repo = re.search(r'^Repository\s*=\s*"([^"]+)"', (ROOT / 'pyproject.toml').read_text(), re.M)[1]
    for page, rep in reports.items():
        name = page.relative_to(site).as_posix()
        if rep['nav_start'][:1] == [site_name]: problems.append(f"{name}: the nav starts with {rep['nav_start']}")
        if repo not in rep['repo']: problems.append(f"{name}: repository links {rep['repo']}, not {repo}")
        if page in order:
            i = order.index(page)
            want = (order[i - 1] if i else None, order[i + 1] if i + 1 < len(order) else None)
            got = tuple(Path(unquote(urlparse(u).path)) if u else None for u in (rep['prev'], rep['next']))
            if got != want: problems.append(f"{name}: footer links {got}, the nav's order gives {want}")
    assert not problems, '\n'.join(problems[:40])
    assert index['nav_start'][0] == 'Home', index['nav_start']


def _notebook_namespace(nb: Path) -> dict:
    """What the notebook's `from miniai... import` lines bind, imported here for real."""
    ns = {}
    for src in code_cells(nb):
        try: tree = ast.parse('\n'.join(ln for ln in src.splitlines() if not ln.lstrip().startswith(('%', '!'))))
        except SyntaxError: continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and 'miniai' in ast.unparse(node):
                exec(compile(ast.Module([node], []), nb.name, 'exec'), ns)
    return ns


def _show_doc_targets(nb: Path) -> list[str]:
    out = []
    for src in code_cells(nb):
        m = re.fullmatch(r'\s*show_doc\(([\w.]+)\)\s*', '\n'.join(ln for ln in src.splitlines()
                                                                    if not ln.lstrip().startswith('#|')))
        if m: out.append(m[1])
    return out


@pytest.mark.slow
def test_show_doc_renders_what_python_says_each_name_is(site, reports):
    """Each `show_doc(X)` of a module notebook is on its page as what X is: a class as a class (the kind, `class
    X(...)` with its constructor's parameters, never `def X`), a function or method with its own parameters;
    with its docstring and a source link to the line that defines it. No signature reads `NoneType`."""
    reports, _ = reports
    problems, n_classes = [], 0
    for nb in MODULE_NOTEBOOKS:
        rep, ns = reports[site / page_of(nb)], _notebook_namespace(nb)
        entries = {e['name']: e for e in rep['entries']}
        for target in _show_doc_targets(nb):
            obj = eval(target, ns)
            name = f"{page_of(nb)}: show_doc({target})"
            fn = obj.fget if isinstance(obj, property) else obj
            e = entries.get(fn.__qualname__)
            if e is None:
                problems.append(f"{name}: no entry named {fn.__qualname__!r} (entries: {sorted(entries)[:8]}...)")
                continue
            sig = ' '.join(e['sig'].split())
            if inspect.isclass(obj):
                n_classes += 1
                if e['kind'] != 'class' or not sig.startswith(f'class {obj.__name__}'):
                    problems.append(f"{name}: a class shown as {e['kind']!r}: {sig[:60]!r}")
                own_init = inspect.isfunction(obj.__init__) or hasattr(obj, '_fields')
                params = [p for p in inspect.signature(obj).parameters] if own_init else []
            else:
                if e['kind'] not in ('function', 'method', 'attribute') or sig.startswith(('class ', 'def ')):
                    problems.append(f"{name}: a function shown as {e['kind']!r}: {sig[:60]!r}")
                params = [p for p in inspect.signature(fn).parameters if p not in ('self', 'cls')]
            if missing := [p for p in params if not re.search(rf'\b{re.escape(p)}\b', sig)]:
                problems.append(f"{name}: the signature {sig!r} lacks {missing}")
            doc = ' '.join((inspect.getdoc(fn) or '').split()[:4])
            if doc and ' '.join(re.sub(r'`', '', doc).split()[:2]) not in e['doc']:
                problems.append(f"{name}: the docstring is not shown ({doc!r}...)")
            m = re.fullmatch(r'source/(miniai/[\w/]+)\.html#L-(\d+)', e['src'] or '')
            if not m: problems.append(f"{name}: no source link ({e['src']!r})"); continue
            lines = (ROOT / f'{m[1]}.py').read_text().splitlines()[int(m[2]) - 1:]
            definition = next(ln for ln in lines if not ln.lstrip().startswith('@'))   # (its decorators first)
            defines = 'class' if inspect.isclass(obj) else 'def'
            if not re.match(rf'\s*(async )?{defines} {fn.__name__}\b', definition):
                problems.append(f"{name}: the source link opens {m[1]}.py line {m[2]}: {lines[0].strip()!r}")
    for page, rep in reports.items():
        problems += [f"{page.relative_to(site)}: {s.splitlines()[0]!r} reads NoneType" for s in rep['signatures']
                     if 'NoneType' in s]
    assert not problems, '\n'.join(problems)
    assert n_classes > 10, f"only {n_classes} classes documented with show_doc"


@pytest.mark.slow
def test_no_plumbing_on_any_notebook_page(site, reports):
    """Readers see the code they would type: no quick-mode line, show_doc import, warning filter or `#|` directive
    in any code cell of any notebook page (the plumbing still runs: it is in `#| hide` cells and `#|hide_line`
    lines, which the hook leaves out)."""
    reports, _ = reports
    problems = []
    for nb in NOTEBOOKS:
        rep = reports[site / page_of(nb)]
        assert rep['code'], f"{page_of(nb)} shows no code at all"
        problems += [f"{page_of(nb)}: {line.strip()!r}" for code in rep['code'] for line in code.splitlines()
                     if PLUMBING.search(line)]
    assert not problems, "plumbing on the pages:\n" + '\n'.join(problems)
    # (and the notebooks do keep their plumbing: in quick mode they still run on a subset)
    assert all(any('MINIAI_QUICK' in c for c in code_cells(nb)) for nb in NOTEBOOKS)


@pytest.mark.slow
def test_hidden_cells_and_lines_are_not_shown(site):
    """`#| hide` cells and `#|hide_line` lines are left out; `show_doc(...)` calls show only their entry."""
    checked = 0
    for nb in NOTEBOOKS:
        text = html.unescape(re.sub(r'<[^>]+>', '', (site / page_of(nb)).read_text()))
        cells = code_cells(nb)
        def code(c): return '\n'.join(ln for ln in c.splitlines() if not ln.lstrip().startswith('#|')).strip()
        def hidden(c): return is_hidden(c) or code(c).startswith('show_doc')
        shown = '\n'.join(code(c) for c in cells if not hidden(c))
        for c in cells:
            if hidden(c) and code(c) and code(c) not in shown:     # (a line shown elsewhere too proves nothing)
                assert code(c) not in text, f"{page_of(nb)} shows a hidden cell of {nb.name}: {code(c)[:80]!r}"
                checked += 1
            for line in re.findall(r'^(.*?)\s*#\|\s*hide_line\s*$', c, re.M):
                assert line.strip() not in text, f"{page_of(nb)} shows a #|hide_line line: {line.strip()!r}"
                checked += 1
    assert checked, "no notebook has a `#| hide` cell, `#|hide_line` line or show_doc cell to check"


@pytest.mark.slow
def test_api_pages_lead_with_main_names_and_skip_undocumented_members(site, reports):
    """The first entry of each API page is one of its module's `__all__` names, with a docstring (`api/learner`:
    `Learner`); every `__all__` name has an entry; no class member without a docstring (`before_fit`, `order`)."""
    reports, _ = reports
    problems = []
    for mod, names in public_names().items():
        if not names: continue                    # a page that is its docstring (miniai.imports)
        rep = reports[site / 'api' / f"{mod.removeprefix('miniai.')}.html"]
        top = [e for e in rep['api'] if e['parent'] is None]
        if not top: problems.append(f"{mod}: no entry"); continue
        first = top[0]
        if first['id'].removeprefix(mod + '.') not in names or not first['doc']:
            problems.append(f"{mod}: the page starts with {first['id']} (docstring {first['doc'][:40]!r})")
        ids = {e['id'] for e in top}
        problems += [f"{mod}: no entry for {n}" for n in names if f'{mod}.{n}' not in ids]
        problems += [f"{mod}: {e['id']} has no docstring" for e in rep['api'] if e['parent'] is not None
                     and not e['doc']]
    assert not problems, '\n'.join(problems)
    learner = [e for e in reports[site / 'api' / 'learner.html']['api'] if e['parent'] is None]
    assert learner[0]['id'] == 'miniai.learner.Learner', learner[0]['id']


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


def test_hooks_find_new_modules_without_edits(tmp_path):
    """The API pages come from walking the package: a new module, or a new subpackage's modules, get pages with
    nothing to list by hand (the hook reads the files, not a list)."""
    hooks = load_tool('mkdocs_hooks')
    pkg = tmp_path / 'miniai'
    for rel in ('__init__.py', '__main__.py', 'core.py', '_private.py', 'cli/__init__.py', 'cli/__main__.py',
                'cli/train.py', 'datasets/__init__.py', 'datasets/idx.py'):
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text('__all__ = []\n')
    old = hooks.ROOT, hooks.PKG
    hooks.ROOT, hooks.PKG = tmp_path, pkg
    try: mods = hooks.modules()
    finally: hooks.ROOT, hooks.PKG = old
    assert mods == ['miniai.cli', 'miniai.cli.train', 'miniai.core', 'miniai.datasets', 'miniai.datasets.idx']


_NO_NOTEBOOK = {'miniai/__init__.py', 'miniai/__main__.py', 'miniai/cli.py', 'miniai/_modidx.py'}  # no API to explain


def test_module_docstrings_name_existing_notebooks():
    """Each module's docstring says which notebook explains it (STYLE.md section 6), and that notebook exists."""
    problems = []
    for py in sorted((ROOT / 'miniai').rglob('*.py')):
        rel = py.relative_to(ROOT).as_posix()
        doc = ast.get_docstring(ast.parse(py.read_text())) or ''
        refs = re.findall(r'(?:nbs/[\w.-]+\.ipynb|docs/[\w.-]+\.md)', doc)   # a notebook, or a page of docs/
        problems += [f"{rel} names {r}, which does not exist" for r in refs if not (ROOT / r).exists()]
        if not refs and rel not in _NO_NOTEBOOK:
            problems.append(f"{rel}: its docstring names no notebook (\"Explained in nbs/NN_topic.ipynb.\")")
    assert not problems, '\n'.join(problems)


def test_an_override_without_a_docstring_shows_its_bases(tmp_path):
    """An override that its base class documents is listed with the base's docstring; a member that nothing
    documents stays without one (and is left out of the API page)."""
    import griffe
    hooks = load_tool('mkdocs_hooks')
    (tmp_path / 'pkgx').mkdir()
    (tmp_path / 'pkgx' / '__init__.py').write_text(
        "class Base:\n    'Base.'\n    def f(self):\n        'What f does.'\n    def h(self): pass\n"
        "class Sub(Base):\n    'Sub.'\n    def f(self): return 1\n"
        "    def g(self): return 2\n    def h(self): return 3\n")
    pkg = griffe.load('pkgx', search_paths=[str(tmp_path)])
    hooks.inherit_docstrings(pkg)
    assert pkg['Sub.f'].docstring.value == 'What f does.'
    assert pkg['Sub.g'].docstring is None and pkg['Sub.h'].docstring is None
