"""mkdocs hooks for the docs site (`mkdocs.yml`): the notebooks, the API reference and the source pages.

- Notebooks: each nbs/*.ipynb goes through nbdev's own directive processing (`NBProcessor` with nbdev's `hide_`,
  `rm_export`, `hide_line`, `filter_stream_`, `strip_ansi`, `rm_header_dash` processors): `#| hide` cells go,
  `#| echo: false` and `show_doc` cells show only their output, `#| output: false` only their code. The result is
  written to a temporary folder under the nbdev page name (`02_learner.ipynb` -> `learner.ipynb`, so the page is
  `learner.html` as on the nbdev site), and mkdocs-jupyter renders it with its saved outputs. Links between
  notebooks (`05_sgd.ipynb#...`) and from docs/ pages (`../nbs/05_sgd.ipynb`) point at those pages.
- API reference: a page per module, `api/<module>.md`, holding `::: miniai.<module>` (mkdocstrings renders every
  name in the module's `__all__`), and a link from every entry to its line on the module's source page.
- Source pages: `source/miniai/<path>.html`, the module's code with an anchor per line (`#L-42`), left out of search.
- Nav: Home, the docs/ pages that exist, the module and tutorial notebooks, the API pages; built from what is there,
  so a page that is missing is simply not listed.
"""
from __future__ import annotations

import html
import re
import shutil
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / 'miniai'
NBS = ROOT / 'nbs'
_SKIP_MODULES = {'_modidx', '__main__'}
# modules that only gather other modules' names (torch's, numpy's, miniai's): their page is their docstring
_DOCSTRING_ONLY = {'miniai.imports'}
_NB_LINK = re.compile(r'(\]\(|href=")(?:\.\./)?(?:nbs/)?(\d+[a-zA-Z0-9]*_[\w-]+|index)\.ipynb(#[^)"\s]*)?')
_tmp: Path | None = None


def page_stem(nb_name: str) -> str:
    """The page nbdev makes of a notebook: `02_learner.ipynb` -> `learner` (nbdev's `nbpath2html` rule)."""
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', nb_name.lower()).removesuffix('.ipynb')


def modules() -> list[str]:
    """Dotted names of the package's modules that get an API page: `miniai.learner`, `miniai.sgd.callbacks`, ..."""
    out = []
    for py in sorted(PKG.rglob('*.py')):
        parts = py.relative_to(ROOT).with_suffix('').parts
        if parts[-1] in _SKIP_MODULES: continue
        if parts[-1] == '__init__':
            parts = parts[:-1]
            if len(parts) == 1: continue          # miniai/__init__.py holds only __version__
        out.append('.'.join(parts))
    return out


def module_file(mod: str) -> Path:
    p = ROOT / Path(*mod.split('.'))
    return p / '__init__.py' if p.is_dir() else p.with_suffix('.py')


def source_uri(path: Path) -> str:
    """The source page of the file at `path`: `miniai/learner.py` -> `source/miniai/learner.md`."""
    return 'source/' + path.relative_to(ROOT).with_suffix('.md').as_posix()


def notebooks() -> list[Path]:
    return sorted(NBS.glob('*.ipynb'), key=lambda p: (p.name != 'index.ipynb', p.name))


_DOCS_LINK = re.compile(r'\]\(\.\./docs/([\w-]+)\.md(#[^)\s]*)?\)')


def link_pages(text: str, ext: str = 'html') -> str:
    """Links to notebooks point at their pages: `](05_sgd.ipynb#x)` -> `](sgd.html#x)`; a notebook's link to a
    docs/ page (`](../docs/benchmarks.md)`, right on GitHub) points at that page too. With `ext='ipynb'` (for
    docs/ pages, whose links mkdocs resolves itself) the target is the notebook page's source name, `sgd.ipynb`."""
    text = _DOCS_LINK.sub(lambda m: f"]({m[1]}.html{m[2] or ''})", text)
    return _NB_LINK.sub(lambda m: f"{m[1]}{page_stem(m[2])}.{ext}{m[3] or ''}", text)


def process_notebook(src: Path, dest: Path):
    """Apply nbdev's `#|` directives to the notebook `src` and write what the page shows to `dest`."""
    from fastcore.nbio import write_nb
    from nbdev.process import NBProcessor
    from nbdev.processors import filter_stream_, hide_, hide_line, rm_export, rm_header_dash, strip_ansi

    def directives(cell):
        d = getattr(cell, 'directives_', None) or {}
        if cell.cell_type != 'code': return
        if str(d.get('include', '')).strip().lower() == 'false': del cell['source']; return
        if str(d.get('output', '')).strip().lower() == 'false': cell['outputs'] = []
        if str(d.get('echo', '')).strip().lower() == 'false' or re.search(r'^show_doc', cell.source, re.M):
            cell.setdefault('metadata', {}).setdefault('tags', []).append('remove_input')

    def markdown_links(cell):
        if cell.cell_type == 'markdown': cell.source = link_pages(cell.source)
        for o in cell.get('outputs', []):     # show_doc's markdown may link notebooks too
            md = o.get('data', {}).get('text/markdown')
            if md is not None: o['data']['text/markdown'] = link_pages(''.join(md) if isinstance(md, list) else md)

    proc = NBProcessor(src, procs=[strip_ansi, hide_line, filter_stream_, rm_header_dash, rm_export, hide_,
                                   directives, markdown_links])
    proc.process()
    for c in proc.nb.cells:
        for k in ('directives_', 'idx_'): c.pop(k, None)
    write_nb(proc.nb, dest)


def on_config(config):
    """The nav, from what exists: a page missing from docs/ is just not listed."""
    guides = sorted(p.relative_to(config['docs_dir']).as_posix() for p in Path(config['docs_dir']).glob('*.md')
                    if p.name != 'index.md')
    nbs = notebooks()
    nav = [{'Home': 'index.ipynb'}]
    if guides: nav.append({'Guides': guides})
    nav.append({'Modules': [page_stem(p.name) + '.ipynb' for p in nbs if re.match(r'^\d+_(?!tut_)', p.name)]})
    nav.append({'Tutorials': [page_stem(p.name) + '.ipynb' for p in nbs if re.match(r'^\d+_tut_', p.name)]})
    nav.append({'API reference': [{m.removeprefix('miniai.'): f'api/{m.removeprefix("miniai.")}.md'}
                                  for m in modules()]})
    config['nav'] = nav
    return config


@event_priority(100)                          # before mkdocs-jupyter's on_files, which claims the .ipynb files
def on_files(files, config):
    global _tmp
    _tmp = Path(tempfile.mkdtemp(prefix='miniai-docs-'))
    for nb in notebooks():
        name = page_stem(nb.name) + '.ipynb'
        process_notebook(nb, _tmp / name)
        files.append(File(name, str(_tmp), config['site_dir'], config['use_directory_urls']))
    for mod in modules():
        short = mod.removeprefix('miniai.')
        doc = f"# {mod}\n\n::: {mod}\n" + ("    options:\n      members: false\n" if mod in _DOCSTRING_ONLY else '')
        files.append(File.generated(config, f'api/{short}.md', content=doc))
    for py in sorted(p for p in PKG.rglob('*.py') if p.name != '_modidx.py'):   # (nbdev's generated index)
        rel = py.relative_to(ROOT).as_posix()
        meta = '---\nsearch:\n  exclude: true\nhide:\n  - navigation\n  - toc\n---\n\n'
        body = f'# {rel}\n\nEvery line has an anchor: `#L-42` is line 42.\n\n(source)\n'
        files.append(File.generated(config, source_uri(py), content=meta + body))
    return files


def on_page_markdown(markdown, page, config, files):
    """docs/ pages may link a notebook as `../nbs/05_sgd.ipynb` (right on GitHub): point that at its page."""
    return link_pages(markdown, ext='ipynb')


def _highlight(path: Path) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer
    fmt = HtmlFormatter(linenos='inline', linespans='L', cssclass='highlight source-listing')
    return highlight(path.read_text(), PythonLexer(), fmt)


_griffe = None


def _locate(identifier: str):
    """(file, line) of the object named `identifier` (aliases followed to their definition), or None."""
    global _griffe
    import griffe
    if _griffe is None: _griffe = griffe.load('miniai', search_paths=[str(ROOT)], resolve_aliases=True)
    try:
        obj = _griffe[identifier.removeprefix('miniai.')]
        obj = obj.final_target if obj.is_alias else obj
        return Path(obj.filepath), obj.lineno
    except Exception:                          # not an object griffe knows (a heading of ours): no link
        return None


_NB_MENTION = re.compile(r'(?<![\w/"=.-])nbs/(\d+[a-zA-Z0-9]*_[\w-]+\.ipynb)')
_DOC_HEADING = re.compile(r'(<h([2-6]) id="(miniai\.[\w.]+)"[^>]*class="doc doc-heading"[^>]*>)(.*?)(</h\2>)', re.S)


_HEADING = re.compile(r'<h([1-6]) id="([^"]*)"(.*?)</h\1>', re.S)


def unique_heading_ids(html_text: str) -> tuple[str, list[tuple[int, str, str]]]:
    """Headings of a notebook page with unique ids (nbconvert repeats an id when a title repeats: the second
    becomes `id_1`, as python-markdown's toc names it), and their (level, id, text) for the table of contents."""
    seen, heads = {}, []

    def fix(m):
        level, hid, rest = int(m[1]), m[2], m[3]
        n = seen.get(hid, 0)
        seen[hid] = n + 1
        new = hid if n == 0 else f'{hid}_{n}'
        rest = rest.replace(f'href="#{hid}"', f'href="#{new}"')
        text = html.unescape(re.sub(r'<[^>]+>', '', rest.split('>', 1)[1] if '>' in rest else rest)).rstrip('¶').strip()
        heads.append((level, new, text))
        return f'<h{level} id="{new}"{rest}</h{level}>'
    return _HEADING.sub(fix, html_text), heads


def _toc(heads, max_level: int = 3):
    """mkdocs' TableOfContents of `heads` (level, id, text), nested by level."""
    from mkdocs.structure.toc import get_toc
    root = {'level': 0, 'children': []}
    stack = [root]
    for level, hid, text in heads:
        if level > max_level: continue
        while stack[-1]['level'] >= level: stack.pop()
        tok = {'level': level, 'id': hid, 'name': html.escape(text), 'children': []}
        stack[-1]['children'].append(tok)
        stack.append(tok)
    return get_toc(root['children'])


def on_page_content(html_text, page, config, files):
    uri = page.file.src_uri
    if uri.endswith('.ipynb'):                 # the toc that mkdocs-jupyter derives misses code in titles
        html_text, heads = unique_heading_ids(html_text)
        page.toc = _toc(heads)
        return html_text
    if uri.startswith('source/'):
        py = (ROOT / uri.removeprefix('source/')).with_suffix('.py')
        return html_text.replace('<p>(source)</p>', _highlight(py))
    if uri.startswith('api/'):
        depth = uri.count('/')

        def add_link(m):
            loc = _locate(m[3])
            if loc is None or not loc[1]: return m[0]
            href = '../' * depth + source_uri(loc[0]).removesuffix('.md') + f'.html#L-{loc[1]}'
            a = f'<a class="doc-source-link" href="{href}" title="{loc[0].relative_to(ROOT)}:{loc[1]}">[source]</a>'
            return m[1] + m[4] + a + m[5]
        html_text = _DOC_HEADING.sub(add_link, html_text)
        # "Explained in nbs/02_learner.ipynb." in a module docstring: a link to that notebook's page
        return _NB_MENTION.sub(lambda m: f'<a href="{"../" * depth}{page_stem(m[1])}.html">{m[0]}</a>', html_text)
    return html_text


_EMPTY_SCRIPT = re.compile(r'<!-- Load mathjax -->\s*<script src=""> </script>')


def on_post_page(output, page, config):
    """mkdocs-jupyter's template loads MathJax from a URL, empty unless one is configured: drop that empty tag."""
    return _EMPTY_SCRIPT.sub('', output)


def on_post_build(config):
    if _tmp is not None: shutil.rmtree(_tmp, ignore_errors=True)
