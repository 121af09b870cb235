"""README.md's opening is nbs/index.ipynb's text, word for word, with the first fit's output and picture."""
from pathlib import Path

from conftest import load_tool

ROOT = Path(__file__).resolve().parent.parent


def test_readme_opening_is_the_index_notebook():
    mod = load_tool('make_readme')
    readme = (ROOT / 'README.md').read_text()
    assert mod.MARKER in readme, "README.md lacks the marker line: run `python tools/make_readme.py`"
    assert readme == mod.readme_text(), "README.md is out of date with nbs/index.ipynb: run tools/make_readme.py"
    assert '```python\ndls = get_dls(bs=1024)' in readme and 'make test' in readme


def test_readme_shows_the_first_fit_output_and_its_picture():
    mod = load_tool('make_readme')
    text, pictures = mod.render()
    assert pictures, "the index notebook's first fit shows no plot"
    for rel, data in pictures.items():
        assert f']({rel.as_posix()})' in text
        assert (ROOT / rel).read_bytes() == data, f"{rel} is out of date: run tools/make_readme.py"
        assert data[:8] == b'\x89PNG\r\n\x1a\n'
    assert '| accuracy | loss | epoch | phase |' in text, "the metrics table of the first fit"


def test_html_table_becomes_markdown():
    mod = load_tool('make_readme')
    md = mod.html_table_to_markdown('<table><thead><tr><th>a</th><th>b &amp; c</th></tr></thead>'
                                    '<tbody><tr><td>1</td><td>2</td></tr></tbody></table>')
    assert md == '| a | b & c |\n| --- | --- |\n| 1 | 2 |'
    assert mod.html_table_to_markdown('<table><tr><th>only a header</th></tr></table>') is None
