"""mkdocs hooks for the docs site (`mkdocs.yml`): the notebooks, the API reference, the source pages and the nav.

- Notebooks: each nbs/*.ipynb goes through nbdev's own directive processing (`NBProcessor` with nbdev's `hide_`,
  `rm_export`, `hide_line`, `filter_stream_`, `strip_ansi`, `rm_header_dash` processors): `#| hide` cells and
  `#|hide_line` lines go, `#| echo: false` cells show only their output, `#| output: false` only their code. The
  result is written to a temporary folder under the nbdev page name (`02_learner.ipynb` -> `learner.ipynb`, so the
  page is `learner.html` as on the nbdev site), and mkdocs-jupyter renders it with its saved outputs. Links between
  notebooks (`05_sgd.ipynb#...`) and from docs/ pages (`../nbs/05_sgd.ipynb`) point at those pages.
- `show_doc(X)` cells: the entry is rendered here, from the source (griffe, as the API pages are), in place of the
  saved output: a class as a class with its constructor's signature, a function or method with its own, the
  annotations and defaults as written, the docstring, and a `[source]` link to the defining line. `X` is found
  through the notebook's `from miniai... import` lines; one that is not found keeps its saved output (and the build
  says so).
- API reference: `api/index.md` (every module, what it holds, its source) and a page per module (and subpackage
  module), `api/<module>.md`, found by walking the package, so a new module gets its page with no edit here. Each
  page lists the module's `__all__` with its main names first (documented before undocumented, defined here before
  re-exported, classes, then functions, then exceptions, then constants; `__all__` order within each), and, inside
  classes, only the members with a docstring of their own (mkdocs.yml: `show_if_no_docstring: false`). Every
  entry links to its line on the module's source page.
- Source pages: `source/miniai/<path>.html`, the module's code with an anchor per line (`#L-42`), left out of search
  and of the nav (they are reached from the API index and the `[source]` links).
- Nav: Home, the module notebooks, the tutorials, the docs/ pages (Guides), the API reference; built from what is
  there, so a page that is missing is simply not listed. The repository link is `[project.urls] Repository` in
  pyproject.toml.
"""
from __future__ import annotations

import ast
import html
import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, InclusionLevel

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / 'miniai'
NBS = ROOT / 'nbs'
log = logging.getLogger('mkdocs.hooks.miniai')
# modules that only gather other modules' names (torch's, numpy's, miniai's): their page is their docstring
_DOCSTRING_ONLY = {'miniai.imports'}
_NB_LINK = re.compile(r'(\]\(|href=")(?:\.\./)?(?:nbs/)?(\d+[a-zA-Z0-9]*_[\w-]+|index)\.ipynb(#[^)"\s]*)?')
_tmp: Path | None = None


def page_stem(nb_name: str) -> str:
    """The page nbdev makes of a notebook: `02_learner.ipynb` -> `learner` (nbdev's `nbpath2html` rule)."""
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', nb_name.lower()).removesuffix('.ipynb')


def _module_name(py: Path) -> str | None:
    """`miniai/sgd/callbacks.py` -> `miniai.sgd.callbacks`; None for what gets no API page: private modules,
    `__main__`, and the top `miniai/__init__.py` (it holds only `__version__`)."""
    parts = py.relative_to(ROOT).with_suffix('').parts
    if parts[-1] == '__init__': parts = parts[:-1]
    elif parts[-1].startswith('_'): return None
    if len(parts) == 1 or any(p.startswith('_') for p in parts): return None
    return '.'.join(parts)


def modules() -> list[str]:
    """Dotted names of the package's modules that get an API page: `miniai.learner`, `miniai.sgd.callbacks`, ..."""
    return sorted(m for py in PKG.rglob('*.py') if (m := _module_name(py)))


def module_file(mod: str) -> Path:
    p = ROOT / Path(*mod.split('.'))
    return p / '__init__.py' if p.is_dir() else p.with_suffix('.py')


def source_files() -> list[Path]:
    """The files that get a source page: every .py of the package but nbdev's generated index."""
    return sorted(p for p in PKG.rglob('*.py') if p.name != '_modidx.py')


def source_uri(path: Path) -> str:
    """The source page of the file at `path`: `miniai/learner.py` -> `source/miniai/learner.md`."""
    return 'source/' + path.relative_to(ROOT).with_suffix('.md').as_posix()


def notebooks() -> list[Path]:
    return sorted(NBS.glob('*.ipynb'), key=lambda p: (p.name != 'index.ipynb', p.name))


def repository_url() -> str | None:
    """`[project.urls] Repository` of pyproject.toml: the one place the repository's address is written."""
    text = (ROOT / 'pyproject.toml').read_text()
    try:
        import tomllib
        return tomllib.loads(text).get('project', {}).get('urls', {}).get('Repository')
    except ImportError:                        # Python 3.10: no tomllib; the line itself is simple enough
        m = re.search(r'^Repository\s*=\s*"([^"]+)"', text, re.M)
        return m[1] if m else None


_DOCS_LINK = re.compile(r'\]\(\.\./docs/([\w-]+)\.md(#[^)\s]*)?\)')


def link_pages(text: str, ext: str = 'html') -> str:
    """Links to notebooks point at their pages: `](05_sgd.ipynb#x)` -> `](sgd.html#x)`; a notebook's link to a
    docs/ page (`](../docs/benchmarks.md)`, right on GitHub) points at that page too. With `ext='ipynb'` (for
    docs/ pages, whose links mkdocs resolves itself) the target is the notebook page's source name, `sgd.ipynb`."""
    text = _DOCS_LINK.sub(lambda m: f"]({m[1]}.html{m[2] or ''})", text)
    return _NB_LINK.sub(lambda m: f"{m[1]}{page_stem(m[2])}.{ext}{m[3] or ''}", text)


# ---------------------------------------------------------------- the package as griffe reads it (no import)
_griffe = None


def package():
    """The `miniai` package as griffe reads it from the source, aliases (re-exports) resolved; loaded once."""
    global _griffe
    import griffe
    if _griffe is None:
        _griffe = griffe.load('miniai', search_paths=[str(ROOT)], resolve_aliases=True)
        inherit_docstrings(_griffe)
    return _griffe


def _classes(mod):
    for m in mod.members.values():
        if m.is_alias: continue
        if m.is_module: yield from _classes(m)
        elif m.is_class: yield m; yield from _classes(m)


def inherit_docstrings(mod):
    """A method or attribute without a docstring of its own takes the one of the same member of its nearest base
    class in the package that has one: an override documented by its base is worth listing, with that text."""
    import griffe
    for cls in _classes(mod):
        try: mro = cls.mro()
        except Exception: continue            # a base griffe cannot follow: nothing to inherit from
        for name, member in cls.members.items():
            if member.is_alias or member.docstring: continue
            base = next((b.members[name] for b in mro if name in b.members and not b.members[name].is_alias
                         and b.members[name].docstring), None)
            if base is not None: member.docstring = griffe.Docstring(base.docstring.value, parent=member)


try:
    import griffe as _g

    class InheritedDocstrings(_g.Extension):
        """The griffe extension that mkdocstrings loads (mkdocs.yml) to apply `inherit_docstrings` on its side."""
        def on_package(self, *, pkg, **kwargs): inherit_docstrings(pkg)
except ImportError:                            # (griffe comes with mkdocstrings[python]: only `make docs` needs it)
    pass


def lookup(path: str):
    """The griffe object at the dotted `path` (`miniai.learner.TrainLearner.get_preds`, inherited members and
    re-exports followed to their definition), or None."""
    try:
        obj = package()[path.removeprefix('miniai').removeprefix('.')] if path != 'miniai' else package()
        return obj.final_target if obj.is_alias else obj
    except Exception:                          # not a name griffe knows (or an alias it can't follow)
        return None


def _locate(identifier: str):
    """(file, line) of the object named `identifier` (aliases followed to their definition), or None."""
    obj = lookup(identifier)
    if obj is None or not obj.lineno: return None
    return Path(obj.filepath), obj.lineno


def exports(mod: str) -> list[str]:
    """The module's `__all__` as written (griffe reads it statically), or its public names if it has none."""
    m = lookup(mod)
    if m is None: return []
    names = [n if isinstance(n, str) else getattr(n, 'name', str(n)) for n in (m.exports or [])]
    return names or [n for n in m.members if not n.startswith('_')]


def _is_exception(cls, depth: int = 0) -> bool:
    names = [str(b).rsplit('.', 1)[-1] for b in cls.bases]
    if any(n.endswith(('Exception', 'Error', 'Warning')) for n in names): return True
    try: return depth < 5 and any(_is_exception(b, depth + 1) for b in cls.resolved_bases)
    except Exception: return False


def api_order(mod: str) -> list[str]:
    """The module's `__all__`, main names first: documented before undocumented, defined here before re-exported,
    then classes, functions, exceptions, constants; the author's `__all__` order within each group."""
    m = lookup(mod)
    names = exports(mod)

    def key(item):
        i, name = item
        try: member = m.members[name]
        except (KeyError, AttributeError): return (2, 1, 4, i)
        try: obj = member.final_target if member.is_alias else member
        except Exception: return (1, 1, 4, i)
        rank = (2 if _is_exception(obj) else 0) if obj.is_class else 1 if obj.is_function else 3
        return (not obj.docstring, member.is_alias, rank, i)
    return [n for _, n in sorted(enumerate(names), key=key)]


def summary(mod: str) -> str:
    """The first sentence of the module's docstring (its first paragraph if that has no full stop)."""
    obj = lookup(mod)
    doc = obj.docstring.value if obj is not None and obj.docstring else ''
    para = ' '.join(doc.split('\n\n', 1)[0].split())
    m = re.match(r'(.+?\.)(\s|$)', para)
    return m[1] if m else para


def api_page(mod: str) -> str:
    """The markdown of `api/<module>.md`: a heading and mkdocstrings' `:::` block with the members in order."""
    if mod in _DOCSTRING_ONLY: return f"# {mod}\n\n::: {mod}\n    options:\n      members: false\n"
    names = api_order(mod)
    return f"# {mod}\n\n::: {mod}\n    options:\n      members: {json.dumps(names)}\n"


def api_index(mods: list[str]) -> str:
    """The markdown of `api/index.md`: one row per module with what it holds and links to its pages."""
    rows = []
    for mod in mods:
        short, py = mod.removeprefix('miniai.'), module_file(mod)
        rows.append(f"| [{short}]({short}.md) | {summary(mod).replace('|', '&#124;')} | "
                    f"[`{py.relative_to(ROOT).as_posix()}`](../{source_uri(py)}) |")
    intro = ('One page per module: the names of its `__all__`, the main ones first, each with its signature, its '
             'docstring and a `[source]` link to the line that defines it. The notebooks explain the same names with '
             'examples.')
    table = '| module | what it holds | source |\n|---|---|---|\n' + '\n'.join(rows)
    documented = {module_file(m) for m in mods}
    others = [f"[`{py.relative_to(ROOT).as_posix()}`](../{source_uri(py)})"
              for py in source_files() if py not in documented]
    more = f"\n\nThe package's other files: {', '.join(others)}." if others else ''
    return f"# API reference\n\n{intro}\n\n{table}{more}\n"


# ---------------------------------------------------------------- show_doc entries on notebook pages
def notebook_names(cells) -> dict[str, str]:
    """What the notebook's `from miniai.x import ...` / `import miniai.x` lines bind: {name: dotted path}."""
    names = {}
    for c in cells:
        if c.get('cell_type') != 'code': continue
        src = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
        src = '\n'.join(ln for ln in src.splitlines() if not ln.lstrip().startswith(('%', '!')))
        try: tree = ast.parse(src)
        except SyntaxError: continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or '').split('.')[0] == 'miniai':
                for a in node.names:
                    if a.name == '*': names.update({n: f'{node.module}.{n}' for n in exports(node.module)})
                    else: names[a.asname or a.name] = f'{node.module}.{a.name}'
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split('.')[0] == 'miniai': names[a.asname or 'miniai'] = a.name if a.asname else 'miniai'
    return names


def _dotted(node) -> str | None:
    if isinstance(node, ast.Name): return node.id
    if isinstance(node, ast.Attribute) and (base := _dotted(node.value)): return f'{base}.{node.attr}'
    return None


def parse_show_doc(code: str) -> tuple[str, dict] | None:
    """`show_doc(Learner.fit, name='fit')` -> ('Learner.fit', {'name': 'fit'}); None for any other cell."""
    lines = [ln for ln in code.splitlines() if not ln.lstrip().startswith('#|')]
    try: tree = ast.parse('\n'.join(lines).strip())
    except SyntaxError: return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr): return None
    call = tree.body[0].value
    if not (isinstance(call, ast.Call) and _dotted(call.func) == 'show_doc' and call.args): return None
    if (target := _dotted(call.args[0])) is None: return None
    try: kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
    except ValueError: kw = {}
    return target, kw


def _kind(obj) -> str:
    if obj.is_class: return 'class'
    if obj.is_function:
        if 'property' in obj.labels: return 'attribute'
        return 'method' if obj.parent is not None and obj.parent.is_class else 'function'
    return 'attribute'


def _param(p) -> str:
    star = {'variadic positional': '*', 'variadic keyword': '**'}.get(p.kind.value, '')
    text = star + p.name
    if p.annotation is not None: text += f': {p.annotation}'
    if p.default is not None and not star: text += f' = {p.default}' if p.annotation is not None else f'={p.default}'
    return text


def _params(params, drop_first: bool) -> list[str]:
    """Parameters as written, with `/` after the positional-only ones and `*` before keyword-only ones."""
    ps = list(params)[1:] if drop_first and len(params) else list(params)
    out, starred = [], any(p.kind.value == 'variadic positional' for p in ps)
    for i, p in enumerate(ps):
        if p.kind.value == 'keyword-only' and not starred:
            out.append('*'); starred = True
        out.append(_param(p))
        if p.kind.value == 'positional-only' and (i + 1 == len(ps) or ps[i + 1].kind.value != 'positional-only'):
            out.append('/')
    return out


def _constructor(cls) -> list[str] | None:
    """The parameters `cls(...)` takes: its (or an inherited, or a dataclass's) `__init__`, a NamedTuple's fields;
    None when neither the class nor a base in the package defines one."""
    init = cls.all_members.get('__init__')
    if init is not None:
        init = init.final_target if init.is_alias else init
        return _params(init.parameters, drop_first=True)
    if any(str(b).rsplit('.', 1)[-1] == 'NamedTuple' for b in cls.bases):
        fields = [a for a in cls.members.values() if a.is_attribute and a.annotation is not None]
        return [f'{a.name}: {a.annotation}' + (f' = {a.value}' if a.value is not None else '') for a in fields]
    return None


def signature(obj, shown: str, width: int = 80) -> str:
    """How a call looks: `class EarlyStoppingCB(monitor: str = 'valid_loss', ...)`, `fit(n_epochs: int = 1, ...)
    -> None`; wrapped at `width` columns, the parameters aligned under the first."""
    name = shown.rsplit('.', 1)[-1]
    if obj.is_class: prefix, params, ret = 'class ', _constructor(obj), ''
    elif obj.is_function:
        if 'property' in obj.labels: return f"{name}: {obj.returns}" if obj.returns is not None else name
        method = obj.parent is not None and obj.parent.is_class and 'staticmethod' not in obj.labels
        prefix = 'async ' if 'async' in obj.labels else ''
        params, ret = _params(obj.parameters, drop_first=method), f' -> {obj.returns}' if obj.returns else ''
    else: return f"{name}: {obj.annotation}" if getattr(obj, 'annotation', None) is not None else name
    if params is None: return prefix + name
    head = f"{prefix}{name}("
    indent = ' ' * (len(head) if len(head) <= 32 else 4)
    lines, line = [], head if len(head) <= 32 else head + '\n' + indent
    for i, p in enumerate(params):
        piece = p + (', ' if i + 1 < len(params) else f'){ret}')
        if len(line) + len(piece.rstrip()) > width and line.strip() not in ('', head.strip()):
            lines.append(line.rstrip()); line = indent
        line += piece
    return '\n'.join(lines + [line]) if params else f"{head}){ret}"


def _markdown(text: str) -> str:
    import markdown
    return markdown.markdown(text, extensions=['admonition', 'tables', 'pymdownx.superfences', 'pymdownx.highlight'])


def docstring_html(obj) -> str:
    """The docstring as HTML: its text as markdown, a `Raises:` section as a list of exceptions and reasons."""
    if not obj.docstring: return ''
    try: sections = obj.docstring.parse('google')
    except Exception: sections = []
    if not sections or any(s.kind.value not in ('text', 'raises') for s in sections):
        return _markdown(obj.docstring.value)
    out = []
    for s in sections:
        if s.kind.value == 'text': out.append(_markdown(s.value))
        else:
            items = ''.join(f'<li><code>{html.escape(str(r.annotation))}</code>: {_markdown(r.description)[3:-4]}</li>'
                            for r in s.value)
            out.append(f'<p class="doc-section-title">Raises:</p><ul>{items}</ul>')
    return '\n'.join(out)


def _highlight_code(code: str) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer
    return highlight(code, PythonLexer(), HtmlFormatter(nowrap=True))


def _api_href(obj, prefix: str) -> str | None:
    """The link to `obj`'s entry on the API page of the module that defines it (if it is in that `__all__`)."""
    mod = obj.module.path
    if obj.parent is None or not obj.parent.is_module or obj.name not in exports(mod): return None
    return f"{prefix}api/{mod.removeprefix('miniai.')}.html#{obj.path}"


def render_entry(obj, shown: str, level: int = 3, prefix: str = '') -> str:
    """The HTML of one `show_doc` entry: a heading with the kind (class, function, method...) and a `[source]`
    link, the signature, the bases of a class, the docstring. `prefix` leads from the page to the site root."""
    kind, hid = _kind(obj), html.escape(shown)
    src = ''
    if obj.lineno and str(obj.filepath).startswith(str(PKG)):
        rel = Path(obj.filepath).relative_to(ROOT)
        href = prefix + source_uri(Path(obj.filepath)).removesuffix('.md') + f'.html#L-{obj.lineno}'
        src = f'<a class="doc-source-link" href="{href}" title="{rel.as_posix()}:{obj.lineno}">[source]</a>'
    head = (f'<h{level} id="{hid}" class="doc doc-heading show-doc-heading">'
            f'<code class="doc-symbol doc-symbol-heading doc-symbol-{kind}"></code> '
            f'<span class="doc doc-object-name">{hid}</span>{src}<a class="anchor-link" href="#{hid}">¶</a></h{level}>')
    sig = f'<div class="doc-signature highlight"><pre><code>{_highlight_code(signature(obj, shown))}</code></pre></div>'
    bases = ''
    if obj.is_class and obj.bases:
        def base(b):
            target = lookup(b.canonical_path) if hasattr(b, 'canonical_path') else None
            href = _api_href(target, prefix) if target is not None else None
            code = f'<code>{html.escape(str(b))}</code>'
            return f'<a href="{href}">{code}</a>' if href else code
        bases = f'<p class="doc doc-class-bases">Bases: {", ".join(base(b) for b in obj.bases)}</p>'
    return (f'<div class="doc doc-object doc-{kind} show-doc">{head}{sig}'
            f'<div class="doc doc-contents">{bases}{docstring_html(obj)}</div></div>')


def show_doc_output(code: str, names: dict[str, str], where: str) -> dict | None:
    """The output that replaces a `show_doc(X)` cell's saved one (a text/html display), or None to keep it."""
    parsed = parse_show_doc(code)
    if parsed is None: return None
    target, kw = parsed
    head, _, rest = target.partition('.')
    obj = lookup(names[head] + ('.' + rest if rest else '')) if head in names else None
    if obj is None:
        log.warning(f"{where}: show_doc({target}): no miniai name {target!r} imported there; its saved output is kept")
        return None
    shown = kw.get('name') or obj.path.removeprefix(obj.module.path + '.')
    entry = render_entry(obj, shown, int(kw.get('title_level', 3)))
    return {'output_type': 'display_data', 'metadata': {}, 'data': {'text/html': entry}}


def process_notebook(src: Path, dest: Path):
    """Apply nbdev's `#|` directives to the notebook `src` and write what the page shows to `dest`."""
    from fastcore.nbio import write_nb
    from nbdev.process import NBProcessor
    from nbdev.processors import filter_stream_, hide_, hide_line, rm_export, rm_header_dash, strip_ansi

    names = notebook_names(json.loads(src.read_text())['cells'])

    def directives(cell):
        d = getattr(cell, 'directives_', None) or {}
        if cell.cell_type != 'code': return
        if str(d.get('include', '')).strip().lower() == 'false': del cell['source']; return
        if str(d.get('output', '')).strip().lower() == 'false': cell['outputs'] = []
        if str(d.get('echo', '')).strip().lower() == 'false' or parse_show_doc(cell.source):
            cell.setdefault('metadata', {}).setdefault('tags', []).append('remove_input')
        if (out := show_doc_output(cell.source, names, src.name)) is not None: cell['outputs'] = [out]

    def markdown_links(cell):
        if cell.cell_type == 'markdown': cell.source = link_pages(cell.source)
        for o in cell.get('outputs', []):     # markdown outputs may link notebooks too
            md = o.get('data', {}).get('text/markdown')
            if md is not None: o['data']['text/markdown'] = link_pages(''.join(md) if isinstance(md, list) else md)

    proc = NBProcessor(src, procs=[strip_ansi, hide_line, filter_stream_, rm_header_dash, rm_export, hide_,
                                   directives, markdown_links])
    proc.process()
    for c in proc.nb.cells:
        for k in ('directives_', 'idx_'): c.pop(k, None)
    write_nb(proc.nb, dest)


# ---------------------------------------------------------------- mkdocs events
def on_config(config):
    """The nav, from what exists (a page missing from docs/ is just not listed), and the repository link."""
    guides = sorted(p.relative_to(config['docs_dir']).as_posix() for p in Path(config['docs_dir']).glob('*.md')
                    if p.name != 'index.md')
    nbs = notebooks()
    nav = [{'Home': 'index.ipynb'},
           {'Modules': [page_stem(p.name) + '.ipynb' for p in nbs if re.match(r'^\d+_(?!tut_)', p.name)]},
           {'Tutorials': [page_stem(p.name) + '.ipynb' for p in nbs if re.match(r'^\d+_tut_', p.name)]}]
    if guides: nav.append({'Guides': guides})
    nav.append({'API reference': ['api/index.md'] + [{m.removeprefix('miniai.'): f'api/{m.removeprefix("miniai.")}.md'}
                                                     for m in modules()]})
    config['nav'] = nav
    if not config.get('repo_url') and (url := repository_url()):
        config['repo_url'] = url
        config['repo_name'] = '/'.join(url.rstrip('/').split('/')[-2:])
    return config


@event_priority(100)                          # before mkdocs-jupyter's on_files, which claims the .ipynb files
def on_files(files, config):
    global _tmp
    _tmp = Path(tempfile.mkdtemp(prefix='miniai-docs-'))
    for nb in notebooks():
        name = page_stem(nb.name) + '.ipynb'
        process_notebook(nb, _tmp / name)
        files.append(File(name, str(_tmp), config['site_dir'], config['use_directory_urls']))
    mods = modules()
    files.append(File.generated(config, 'api/index.md', content=api_index(mods)))
    for mod in mods:
        files.append(File.generated(config, f"api/{mod.removeprefix('miniai.')}.md", content=api_page(mod)))
    for py in source_files():
        rel = py.relative_to(ROOT).as_posix()
        meta = '---\nsearch:\n  exclude: true\nhide:\n  - navigation\n  - toc\n---\n\n'
        body = f'# {rel}\n\nEvery line has an anchor: `#L-42` is line 42.\n\n(source)\n'
        files.append(File.generated(config, source_uri(py), content=meta + body, inclusion=InclusionLevel.NOT_IN_NAV))
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


_NB_MENTION = re.compile(r'(?<![\w/"=.-])nbs/(\d+[a-zA-Z0-9]*_[\w-]+\.ipynb)')
_DOC_HEADING = re.compile(r'(<h([2-6]) id="(miniai\.[\w.]+)"[^>]*class="doc doc-heading"[^>]*>)(.*?)(</h\2>)', re.S)
_HEADING = re.compile(r'<h([1-6])(\s[^>]*?)?\sid="([^"]*)"([^>]*)>(.*?)</h\1>', re.S)
_NOT_TITLE = re.compile(r'<a class="(?:doc-source-link|anchor-link)"[^>]*>.*?</a>', re.S)


def unique_heading_ids(html_text: str) -> tuple[str, list[tuple[int, str, str]]]:
    """Headings of a notebook page with unique ids (nbconvert repeats an id when a title repeats: the second
    becomes `id_1`, as python-markdown's toc names it), and their (level, id, text) for the table of contents."""
    seen, heads = {}, []

    def fix(m):
        level, before, hid, after, inner = int(m[1]), m[2] or '', m[3], m[4], m[5]
        n = seen.get(hid, 0)
        seen[hid] = n + 1
        new = hid if n == 0 else f'{hid}_{n}'
        inner = inner.replace(f'href="#{hid}"', f'href="#{new}"')
        text = html.unescape(re.sub(r'<[^>]+>', '', _NOT_TITLE.sub('', inner))).rstrip('¶').strip()
        heads.append((level, new, text))
        return f'<h{level}{before} id="{new}"{after}>{inner}</h{level}>'
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
        if page.is_homepage: page.title = 'Home'   # (mkdocs-jupyter titles it with the notebook's own heading)
        return html_text
    if uri.startswith('source/'):
        py = (ROOT / uri.removeprefix('source/')).with_suffix('.py')
        return html_text.replace('<p>(source)</p>', _highlight(py))
    if uri.startswith('api/'):
        depth = uri.count('/')

        def add_link(m):
            loc = _locate(m[3])
            if loc is None: return m[0]
            href = '../' * depth + source_uri(loc[0]).removesuffix('.md') + f'.html#L-{loc[1]}'
            a = f'<a class="doc-source-link" href="{href}" title="{loc[0].relative_to(ROOT)}:{loc[1]}">[source]</a>'
            return m[1] + m[4] + a + m[5]
        html_text = _DOC_HEADING.sub(add_link, html_text)
        # "Explained in nbs/02_learner.ipynb." in a module docstring: a link to that notebook's page
        return _NB_MENTION.sub(lambda m: f'<a href="{"../" * depth}{page_stem(m[1])}.html">{m[0]}</a>', html_text)
    return html_text


_EMPTY_SCRIPT = re.compile(r'<!-- Load mathjax -->\s*<script src=""> </script>')


def on_post_page(output, page, config):
    """mkdocs-jupyter's template loads MathJax from a URL, empty unless one is configured: drop that empty tag.
    mkdocs-material's repository link would fetch the repository's stars from the GitHub API: the site stays
    offline, so the link stays a plain link."""
    output = output.replace('data-md-component="source"', '')
    return _EMPTY_SCRIPT.sub('', output)


def on_post_build(config):
    if _tmp is not None: shutil.rmtree(_tmp, ignore_errors=True)
