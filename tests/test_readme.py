"""README.md's opening is nbs/index.ipynb's text, word for word."""
from pathlib import Path

from conftest import load_tool

ROOT = Path(__file__).resolve().parent.parent


def test_readme_opening_is_the_index_notebook():
    mod = load_tool('make_readme')
    readme = (ROOT / 'README.md').read_text()
    assert mod.MARKER in readme, "README.md lacks the marker line: run `python tools/make_readme.py`"
    assert readme == mod.readme_text(), "README.md is out of date with nbs/index.ipynb: run tools/make_readme.py"
    assert '```python\ndls = get_dls(bs=1024)' in readme and 'make test' in readme
