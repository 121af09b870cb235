"""Write README.md's opening from nbs/index.ipynb, so the two agree word for word; the rest of README is kept.

The index's markdown cells are copied as they are (links to notebooks gain an `nbs/` prefix), its visible code cells
become ```python blocks followed by what they showed: a metrics table (MetricsCB's HTML table) becomes a markdown
table, and a plot is written to `docs/assets/readme/<cell id>.png` and shown as an image; `#| hide` cells are left
out. Everything in README.md from the marker line on is README's own. `tests/test_readme.py` fails when README.md
or a picture is out of date: run `python tools/make_readme.py`.
"""
import base64
import html
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
MARKER = '<!-- Everything above is generated from nbs/index.ipynb by tools/make_readme.py; edit it there. -->'
IMAGES = Path('docs') / 'assets' / 'readme'          # relative to ROOT, as README links it
_CELL = re.compile(r'<t([hd])>(.*?)</t[hd]>', re.S)


def html_table_to_markdown(table: str) -> str | None:
    """A simple HTML table (one header row, plain cells) as a markdown table, or None if it holds no rows."""
    rows = [[html.unescape(re.sub(r'<[^>]+>', '', c[2])).strip() for c in _CELL.finditer(r)]
            for r in re.findall(r'<tr>(.*?)</tr>', table, re.S)]
    rows = [r for r in rows if r]
    if len(rows) < 2: return None
    lines = ['| ' + ' | '.join(rows[0]) + ' |', '|' + ' --- |' * len(rows[0])]
    return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in rows[1:]])


def outputs(cell) -> tuple[list[str], dict[Path, bytes]]:
    """The markdown for what a code cell showed (tables, plots) and the picture files it needs."""
    parts, files = [], {}
    for i, out in enumerate(cell.get('outputs', [])):
        data = out.get('data', {})
        if 'image/png' in data:
            name = IMAGES / f"{cell.get('id', 'cell')}-{i}.png"
            files[name] = base64.b64decode(''.join(data['image/png']))
            parts.append(f'![the output of the code above]({name.as_posix()})')
        elif 'text/html' in data and '<table' in ''.join(data['text/html']):
            if (md := html_table_to_markdown(''.join(data['text/html']))) is not None: parts.append(md)
    return parts, files


def render(path=ROOT / 'nbs' / 'index.ipynb') -> tuple[str, dict[Path, bytes]]:
    """The README opening that the index notebook gives, and the pictures it shows (path -> PNG bytes)."""
    parts, files = [], {}
    for cell in nbformat.read(path, as_version=4).cells:
        src = cell.source.strip()
        if not src or src.startswith('#| hide'): continue
        if cell.cell_type == 'markdown': parts.append(re.sub(r'\]\((\d\d_[\w]+\.ipynb)\)', r'](nbs/\1)', src))
        elif cell.cell_type == 'code':
            parts.append(f'```python\n{src}\n```')
            shown, pics = outputs(cell)
            parts += shown
            files.update(pics)
    return '\n\n'.join(parts) + '\n', files


def from_index(path=ROOT / 'nbs' / 'index.ipynb') -> str:
    """The README opening that the index notebook gives."""
    return render(path)[0]


def readme_text(readme=ROOT / 'README.md') -> str:
    """README.md as it should be: the index's opening, the marker, then README's own part unchanged."""
    own = readme.read_text().split(MARKER, 1)[1] if MARKER in readme.read_text() else '\n'
    return from_index() + '\n' + MARKER + own


if __name__ == '__main__':
    text, pictures = readme_text(), render()[1]
    (ROOT / IMAGES).mkdir(parents=True, exist_ok=True)
    for old in (ROOT / IMAGES).glob('*.png'):
        if old.relative_to(ROOT) not in pictures: old.unlink()
    for rel, data in pictures.items(): (ROOT / rel).write_bytes(data)
    (ROOT / 'README.md').write_text(text)
    print(f'README.md and {len(pictures)} picture(s) in {IMAGES} updated from nbs/index.ipynb', file=sys.stderr)
