#!/usr/bin/env python
"""Build the docs site offline from the executed notebooks: one HTML page per nbs/*.ipynb, into _docs/.

    .venv/bin/python tools/build_docs.py              # -> _docs/index.html, _docs/learner.html, ...
    .venv/bin/python tools/build_docs.py --out DIR

Pages are named as nbdev names them (the numeric prefix dropped: 02_learner.ipynb -> learner.html), and a
link to `02_learner.ipynb#section` in a notebook points at that page, as Quarto does. Each page has a sidebar
linking every page and its own table of contents. Notebook outputs are shown as they were saved: `show_doc`'s
markdown (the API reference from the docstrings), tables, text, and plots (written beside the pages as PNG files).
Cells marked `#| hide` (or `include: false`) are left out, `#| echo: false` shows only the output and
`#| output: false` only the code; as in nbdev, a `show_doc` cell shows its entry without the call. Heading ids
follow pandoc's rules, so anchors match the Quarto site's. Needs nbformat, nbconvert (for its markdown
renderer) and pygments; runs nothing. `nbdev_docs` builds the Quarto version of the same site where quarto is
installed.
"""
from __future__ import annotations

import argparse
import base64
import html
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE_TITLE = 'miniai'
_ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')
_DIRECTIVE = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')
# a heading as nbconvert's markdown renderer writes it (its id and pilcrow link are replaced by ours)
_HEADING = re.compile(r'<h([1-6])(?: id="[^"]*")?>(.*?)(?:<a class="anchor-link"[^>]*>[^<]*</a>)?</h\1>', re.S)
_TAG = re.compile(r'<[^>]+>')
_SHOW_DOC = re.compile(r'^show_doc', re.M)                  # nbdev's test for a show_doc cell


def page_name(nb: Path) -> str:
    """The page nbdev makes of notebook `nb`: `02_learner.ipynb` -> `learner.html` (nbdev's `nbpath2html` rule)."""
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', nb.name.lower()).removesuffix('.ipynb') + '.html'


def slugify(text: str) -> str:
    """pandoc's auto identifier (what Quarto gives a heading): `Learner.fit` -> `learner.fit`, `A b` -> `a-b`."""
    s = re.sub(r'[^\w\s.-]', '', html.unescape(_TAG.sub('', text)).strip().lower())
    s = re.sub(r'\s+', '-', s)
    s = re.sub(r'^[^a-z]+', '', s)
    return s or 'section'


def directives(src: str) -> tuple[dict, str]:
    """The `#|` options at the top of a code cell and the code without them."""
    opts, lines = {}, src.splitlines()
    while lines and (m := _DIRECTIVE.match(lines[0])):
        opts[m[1].replace('-', '_')] = m[2].lower() not in ('false', 'no', '0') if m[2] else True
        lines.pop(0)
    return opts, '\n'.join(lines)


class Page:
    """One notebook turned into the HTML of its article, its headings and its title."""
    def __init__(self, nb_path: Path, links: dict[str, str], out: Path):
        import nbformat
        self.src, self.name, self.links = nb_path, page_name(nb_path), links
        self.nb = nbformat.read(nb_path, as_version=4)
        self.files = out / (Path(self.name).stem + '_files')
        self.ids, self.toc, self.n_images = {}, [], 0
        self.title = next((m[1].strip() for c in self.nb.cells if c.cell_type == 'markdown'
                           for m in [re.search(r'^#\s+(.+)$', c.source, re.M)] if m), nb_path.stem)
        self.body = '\n'.join(self.cell(c) for c in self.nb.cells)

    # --- markdown -------------------------------------------------------------------------------------------
    def markdown(self, md: str, toc: bool = True) -> str:
        from nbconvert.filters.markdown_mistune import markdown2html_mistune
        out = markdown2html_mistune(md)
        out = _HEADING.sub(lambda m: self.heading(int(m[1]), m[2], toc), out)
        return re.sub(r'href="([^"#:]+)\.ipynb(#[^"]*)?"', self.link, out)

    def heading(self, level: int, inner: str, toc: bool) -> str:
        base = slugify(inner)
        hid, i = base, 0
        while hid in self.ids: i += 1; hid = f'{base}-{i}'
        self.ids[hid] = True
        if toc and level in (2, 3): self.toc.append((level, hid, _TAG.sub('', inner)))
        link = f'<a class="anchor" href="#{hid}" aria-label="link to this section">#</a>'
        return f'<h{level} id="{hid}">{inner}{link}</h{level}>'

    def link(self, m) -> str:
        target = self.links.get(Path(m[1]).name + '.ipynb')
        if target is None: return m[0]             # not one of ours: left as it is (and the link check says so)
        return f'href="{target}{m[2] or ""}"'

    # --- cells ----------------------------------------------------------------------------------------------
    def cell(self, c) -> str:
        if c.cell_type == 'markdown': return f'<div class="cell markdown">{self.markdown(c.source)}</div>'
        if c.cell_type != 'code': return ''
        opts, code = directives(c.source)
        if opts.get('hide') or opts.get('include') is False: return ''
        if _SHOW_DOC.search(code): opts.setdefault('echo', False)   # as nbdev shows them: the entry, not the call
        parts = []
        if opts.get('echo', True) and code.strip(): parts.append(f'<div class="input">{highlight(code)}</div>')
        if opts.get('output', True):
            outs = ''.join(self.output(o) for o in c.get('outputs', []))
            if outs: parts.append(f'<div class="output">{outs}</div>')
        return f'<div class="cell code">{"".join(parts)}</div>' if parts else ''

    def output(self, o) -> str:
        kind = o.get('output_type')
        if kind == 'stream':
            text = html.escape(_ANSI.sub('', o.get('text', '')))
            return f'<pre class="stream {o.get("name", "stdout")}">{text}</pre>'
        if kind == 'error':
            tb = _ANSI.sub('', '\n'.join(o.get('traceback', [])) or f"{o.get('ename')}: {o.get('evalue')}")
            return f'<pre class="error">{html.escape(tb)}</pre>'
        data = o.get('data', {})
        for mime in ('text/html', 'image/png', 'image/jpeg', 'image/svg+xml', 'text/markdown', 'text/plain'):
            if mime not in data: continue
            v = data[mime]
            v = ''.join(v) if isinstance(v, list) else v
            if mime == 'text/html': return f'<div class="html">{v}</div>'
            if mime.startswith('image/'): return self.image(mime, v, data.get('text/plain', ''))
            if mime == 'text/markdown': return f'<div class="md-output">{self.markdown(v)}</div>'
            return f'<pre class="result">{html.escape(_ANSI.sub("", v))}</pre>'
        return ''

    def image(self, mime: str, v: str, alt) -> str:
        self.files.mkdir(parents=True, exist_ok=True)
        self.n_images += 1
        ext = {'image/png': 'png', 'image/jpeg': 'jpg', 'image/svg+xml': 'svg'}[mime]
        fn = self.files / f'figure-{self.n_images}.{ext}'
        if ext == 'svg': fn.write_text(v)
        else: fn.write_bytes(base64.b64decode(v))
        alt = html.escape(''.join(alt) if isinstance(alt, list) else alt, quote=True)
        return f'<img src="{self.files.name}/{fn.name}" alt="{alt}">'


def highlight(code: str) -> str:
    from pygments import highlight as hl
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer
    return hl(code, PythonLexer(), HtmlFormatter(cssclass='highlight'))


def group(nb: Path) -> str:
    if nb.name == 'index.ipynb': return 'Start'
    return 'Tutorials' if re.match(r'^\d+_tut_', nb.name) else 'Modules'


def sidebar(pages: list[Page], current: Page) -> str:
    out, last = ['<nav class="sidebar">', f'<a class="site-title" href="index.html">{SITE_TITLE}</a>'], None
    for p in pages:
        g = group(p.src)
        if g != last:
            out.append(('</ul>' if last else '') + f'<div class="group">{g}</div><ul>')
            last = g
        cls = ' class="current"' if p is current else ''
        out.append(f'<li><a{cls} href="{p.name}">{html.escape(p.title)}</a></li>')
    out.append('</ul></nav>')
    return '\n'.join(out)


def toc(page: Page) -> str:
    if not page.toc: return ''
    items = ''.join(f'<li class="l{lvl}"><a href="#{hid}">{html.escape(txt)}</a></li>'
                    for lvl, hid, txt in page.toc)
    return f'<nav class="toc"><div class="group">On this page</div><ul>{items}</ul></nav>'


TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} – {site}</title>
<link rel="stylesheet" href="style.css">
</head>
<body>
{sidebar}
<main>
<article>
{body}
</article>
<footer>Built from <code>nbs/{source}</code> by <code>tools/build_docs.py</code>.</footer>
</main>
{toc}
</body>
</html>
"""

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --accent: #0969da; --code-bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       display: grid; grid-template-columns: 250px minmax(0, 1fr) 230px; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.sidebar, .toc { position: sticky; top: 0; height: 100vh; overflow-y: auto; padding: 20px 16px; font-size: 14px; }
.sidebar { border-right: 1px solid var(--line); background: #fbfcfd; }
.toc { border-left: 1px solid var(--line); }
.site-title { display: block; font-weight: 700; font-size: 22px; color: var(--fg); margin-bottom: 12px; }
.group { text-transform: uppercase; font-size: 12px; letter-spacing: .05em; color: var(--muted);
         margin: 16px 0 4px; }
nav ul { list-style: none; margin: 0; padding: 0; } nav li { margin: 3px 0; }
.sidebar a.current { font-weight: 700; color: var(--fg); }
.toc li.l3 { padding-left: 12px; font-size: 13px; }
.toc a { overflow-wrap: anywhere; }
main { padding: 24px 40px; min-width: 0; } article { max-width: 960px; }
footer { max-width: 960px; margin-top: 48px; padding-top: 12px; border-top: 1px solid var(--line);
         color: var(--muted); font-size: 13px; }
h1 { font-size: 2.2em; margin: .2em 0 .3em; }
h2 { border-bottom: 1px solid var(--line); padding-bottom: .2em; margin-top: 1.6em; }
.anchor { visibility: hidden; margin-left: .3em; color: var(--muted); }
h1:hover .anchor, h2:hover .anchor, h3:hover .anchor { visibility: visible; }
blockquote { margin: 0 0 1em; padding: 0 1em; color: var(--muted); border-left: 4px solid var(--line); }
code { background: var(--code-bg); padding: .1em .3em; border-radius: 4px; font-size: 88%; }
pre { margin: 0; padding: 10px 12px; overflow-x: auto; font-size: 13.5px; line-height: 1.45; }
pre code { background: none; padding: 0; }
.highlight { background: var(--code-bg); border-radius: 6px; }
.cell.code { margin: 14px 0; }
.input .highlight { border: 1px solid var(--line); }
.output { border-left: 3px solid var(--line); margin: 4px 0 0 0; padding-left: 8px; overflow-x: auto; }
.output pre.stderr { background: #fff8c5; } .output pre.error { background: #ffebe9; }
.output img { max-width: 100%; height: auto; display: block; margin: 6px 0; }
.md-output hr { border: 0; border-top: 1px solid var(--line); }
.md-output h3 { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 1.05em; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; }
thead th { background: var(--code-bg); }
@media (max-width: 1100px) { body { grid-template-columns: 220px minmax(0, 1fr); } .toc { display: none; } }
"""


def notebooks(nbs: Path) -> list[Path]:
    return sorted(nbs.glob('*.ipynb'), key=lambda p: (p.name != 'index.ipynb', p.name))


def build(nbs: Path, out: Path) -> list[Path]:
    """Write a page per notebook in `nbs`, and style.css, to `out` (replacing what was there); returns the pages."""
    from pygments.formatters import HtmlFormatter
    nb_paths = notebooks(nbs)
    if not nb_paths: raise FileNotFoundError(f"no notebooks in {nbs}")
    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    links = {p.name: page_name(p) for p in nb_paths}
    pages = [Page(p, links, out) for p in nb_paths]
    (out / 'style.css').write_text(CSS + HtmlFormatter(cssclass='highlight').get_style_defs('.highlight'))
    for p in pages:
        (out / p.name).write_text(TEMPLATE.format(title=html.escape(p.title), site=SITE_TITLE, body=p.body,
                                                  sidebar=sidebar(pages, p), toc=toc(p), source=p.src.name))
    return [out / p.name for p in pages]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--nbs', type=Path, default=ROOT / 'nbs', help="folder of notebooks")
    ap.add_argument('--out', type=Path, default=ROOT / '_docs', help="output folder (replaced)")
    args = ap.parse_args(argv)
    pages = build(args.nbs, args.out)
    print(f"{len(pages)} pages in {args.out}: open {args.out / 'index.html'}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
