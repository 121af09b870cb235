"""Write README.md's opening from nbs/index.ipynb, so the two agree word for word; the rest of README is kept.

The index's markdown cells are copied as they are (links to notebooks gain an `nbs/` prefix), its visible code cells
become ```python blocks, and `#| hide` cells are left out. What a visible code cell printed follows its code, taken
from the notebook's saved outputs: printed text and the metrics table (the HTML table of `ProgressCB`, without its
`time` column, which only says how busy the machine was) as a ```text block, and a plot as a PNG file under
docs/images/, named after the section it is in, that the README shows. Everything in README.md from the marker line
on is README's own. `tests/test_readme.py` fails when README.md or a PNG is out of date: run
`python tools/make_readme.py`.
"""
import base64
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
INDEX = ROOT / 'nbs' / 'index.ipynb'
IMAGES = 'docs/images'   # relative to ROOT: where the README's pictures go
MARKER = '<!-- Everything above is generated from nbs/index.ipynb by tools/make_readme.py; edit it there. -->'
DROPPED_COLUMNS = ('time',)


class _Table(HTMLParser):
    """The header and rows of the first <table> in an HTML snippet, as lists of cell texts."""
    def __init__(self):
        super().__init__()
        self.rows, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == 'tr': self.rows.append([])
        elif tag in ('td', 'th'): self._cell = ''

    def handle_endtag(self, tag):
        if tag in ('td', 'th') and self._cell is not None and self.rows:
            self.rows[-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None: self._cell += data


def table_text(html: str) -> str | None:
    """An HTML table as aligned plain-text columns, without the columns in `DROPPED_COLUMNS`; None if no table."""
    if '<table' not in html: return None
    parser = _Table()
    parser.feed(html)
    rows = [r for r in parser.rows if r]
    if not rows: return None
    keep = [i for i, name in enumerate(rows[0]) if name not in DROPPED_COLUMNS]
    rows = [[r[i] for i in keep if i < len(r)] for r in rows]
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(keep))]
    return '\n'.join('  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def slug(title: str) -> str:
    """'A first fit' -> 'a-first-fit'."""
    return re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')


def outputs(cell, title: str) -> tuple[list[str], dict[str, bytes]]:
    """The README blocks for a code cell's saved outputs, and the PNGs they show ({path under ROOT: bytes}).

    `title` is the heading of the section the cell is in: it names the PNGs and is their alt text.
    """
    texts, images, section = [], {}, slug(title)
    for out in cell.get('outputs', []):
        if out.output_type == 'stream' and out.name == 'stdout': texts.append(out.text.rstrip('\n'))
        elif out.output_type in ('display_data', 'execute_result'):
            data = out.get('data', {})
            if 'image/png' in data:
                name = section + ('' if not images else f'-{len(images) + 1}')
                images[f'{IMAGES}/{name}.png'] = base64.b64decode(data['image/png'])
            elif (table := table_text(data.get('text/html', ''))) is not None: texts.append(table)
            elif out.output_type == 'execute_result' and 'text/plain' in data: texts.append(data['text/plain'])
    blocks = [f'```text\n{t}\n```' for t in texts if t.strip()]
    blocks += [f"![{title}]({path})" for path in images]
    return blocks, images


def render(path=INDEX) -> tuple[str, dict[str, bytes]]:
    """The README opening that the index notebook gives, and the PNGs it shows ({path under ROOT: bytes})."""
    parts, images, title = [], {}, 'index'
    for cell in nbformat.read(path, as_version=4).cells:
        src = cell.source.strip()
        if not src or src.startswith('#| hide'): continue
        if cell.cell_type == 'markdown':
            parts.append(re.sub(r'\]\((\d\d_[\w]+\.ipynb)\)', r'](nbs/\1)', src))
            headings = re.findall(r'^#{1,6} +(.+?) *$', src, re.M)
            if headings: title = headings[-1]
        elif cell.cell_type == 'code':
            parts.append(f'```python\n{src}\n```')
            blocks, shown = outputs(cell, title)
            parts += blocks
            images.update(shown)
    return '\n\n'.join(parts) + '\n', images


def from_index(path=INDEX) -> str:
    """The README opening that the index notebook gives."""
    return render(path)[0]


def readme_text(readme=ROOT / 'README.md', index=INDEX) -> str:
    """README.md as it should be: the index's opening, the marker, then README's own part unchanged."""
    text = readme.read_text()
    own = text.split(MARKER, 1)[1] if MARKER in text else '\n'
    return from_index(index) + '\n' + MARKER + own


def write(root=ROOT, index=INDEX):
    """Bring `root`/README.md and the PNGs it shows up to date with `index`."""
    for rel, png in render(index)[1].items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(png)
    readme = root / 'README.md'
    if not readme.exists(): readme.write_text('')
    readme.write_text(readme_text(readme, index))


if __name__ == '__main__':
    write()
    print('README.md updated from nbs/index.ipynb', file=sys.stderr)
