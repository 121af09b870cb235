"""Write README.md's opening from nbs/index.ipynb, so the two agree word for word; the rest of README is kept.

The index's markdown cells are copied as they are (links to notebooks gain an `nbs/` prefix), its visible code cells
become ```python blocks, and `#| hide` cells are left out. Everything in README.md from the marker line on is
README's own. `tests/test_readme.py` fails when README.md is out of date: run `python tools/make_readme.py`.
"""
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
MARKER = '<!-- Everything above is generated from nbs/index.ipynb by tools/make_readme.py; edit it there. -->'


def from_index(path=ROOT / 'nbs' / 'index.ipynb') -> str:
    """The README opening that the index notebook gives."""
    parts = []
    for cell in nbformat.read(path, as_version=4).cells:
        src = cell.source.strip()
        if not src or src.startswith('#| hide'): continue
        if cell.cell_type == 'markdown': parts.append(re.sub(r'\]\((\d\d_[\w]+\.ipynb)\)', r'](nbs/\1)', src))
        elif cell.cell_type == 'code': parts.append(f'```python\n{src}\n```')
    return '\n\n'.join(parts) + '\n'


def readme_text(readme=ROOT / 'README.md') -> str:
    """README.md as it should be: the index's opening, the marker, then README's own part unchanged."""
    own = readme.read_text().split(MARKER, 1)[1] if MARKER in readme.read_text() else '\n'
    return from_index() + '\n' + MARKER + own


if __name__ == '__main__':
    (ROOT / 'README.md').write_text(readme_text())
    print('README.md updated from nbs/index.ipynb', file=sys.stderr)
