"""README.md's opening is nbs/index.ipynb's text, word for word, with what its first fit printed and plotted."""
import base64
import io
import re
from pathlib import Path

import matplotlib
import nbformat
import pytest

from conftest import load_tool

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def mod(): return load_tool('make_readme')


def test_readme_opening_is_the_index_notebook(mod):
    readme = (ROOT / 'README.md').read_text()
    assert mod.MARKER in readme, "README.md lacks the marker line: run `python tools/make_readme.py`"
    assert readme == mod.readme_text(), "README.md is out of date with nbs/index.ipynb: run tools/make_readme.py"
    assert '```python\ndls = get_dls(bs=1024)' in readme and 'make test' in readme


def test_readme_pictures_are_the_index_notebooks_plots(mod):
    images = mod.render()[1]
    assert images, "nbs/index.ipynb's first fit has no saved plot: re-execute it with tools/run_notebooks.py"
    readme = (ROOT / 'README.md').read_text()
    for rel, png in images.items():
        assert f']({rel})' in readme
        assert (ROOT / rel).is_file() and (ROOT / rel).read_bytes() == png, \
            f"{rel} differs from the plot saved in nbs/index.ipynb: run tools/make_readme.py"


def test_readme_shows_what_the_first_fit_printed(mod):
    """The metrics table under the fit's code is that cell's own saved output: the code shown is the code run."""
    cell = next(c for c in nbformat.read(mod.INDEX, as_version=4).cells
                if c.cell_type == 'code' and 'fit_one_cycle' in c.source)
    html = next(o.data['text/html'] for o in cell.outputs if '<table' in o.get('data', {}).get('text/html', ''))
    table = mod.table_text(html)
    assert table.split('\n')[0].split() == ['epoch', 'train_loss', 'valid_loss', 'train_accuracy', 'valid_accuracy',
                                           'lr']                     # the time column is dropped
    readme = (ROOT / 'README.md').read_text()
    assert f'```python\n{cell.source.strip()}\n```\n\n```text\n{table}\n```' in readme


def _png():
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([3, 1, 2])
    buf = io.BytesIO()
    fig.savefig(buf, format='png')
    plt.close(fig)
    return buf.getvalue()


def _index(path):
    """A small index notebook with every kind of cell and output the README generator handles."""
    table = ('<div><table class="fastprogress"><thead><tr><th>epoch</th><th>train_loss</th><th>time</th></tr>'
             '</thead><tbody><tr><td>0</td><td>0.25</td><td>00:41</td></tr>'
             '<tr><td>1</td><td>0.5</td><td>00:02</td></tr></tbody></table></div>')
    png = _png()
    code = nbformat.v4.new_code_cell('fit()', outputs=[
        nbformat.v4.new_output('stream', name='stdout', text='starting\n'),
        nbformat.v4.new_output('stream', name='stderr', text='a warning\n'),
        nbformat.v4.new_output('display_data', data={'text/html': '<style>p {}</style>', 'text/plain': '<HTML>'}),
        nbformat.v4.new_output('display_data', data={'text/html': table, 'text/plain': table}),
        nbformat.v4.new_output('display_data', data={'image/png': base64.b64encode(png).decode(),
                                                     'text/plain': '<Figure>'})])
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell('# demo\n\nSee [the learner](02_learner.ipynb).\n\n## Loss, plotted!'),
        nbformat.v4.new_code_cell('#| hide\nsecret = 1'),
        code,
        nbformat.v4.new_markdown_cell('The end.')])
    nbformat.write(nb, path)
    return png


def test_render_turns_cells_and_outputs_into_readme_blocks(mod, tmp_path):
    png = _index(tmp_path / 'index.ipynb')
    text, images = mod.render(tmp_path / 'index.ipynb')
    assert images == {'docs/images/loss-plotted.png': png}
    assert text == ('# demo\n\nSee [the learner](nbs/02_learner.ipynb).\n\n## Loss, plotted!\n\n'
                    '```python\nfit()\n```\n\n```text\nstarting\n```\n\n'
                    '```text\nepoch  train_loss\n0      0.25\n1      0.5\n```\n\n'
                    '![Loss, plotted!](docs/images/loss-plotted.png)\n\nThe end.\n')


def test_write_keeps_readmes_own_part_and_catches_a_stale_opening(mod, tmp_path):
    index = tmp_path / 'index.ipynb'
    png = _index(index)
    (tmp_path / 'README.md').write_text(f'old opening\n{mod.MARKER}\n\n## Own part\n\nKept as written.\n')
    mod.write(tmp_path, index)
    readme = (tmp_path / 'README.md').read_text()
    assert readme.startswith('# demo\n') and readme.endswith(f'{mod.MARKER}\n\n## Own part\n\nKept as written.\n')
    assert (tmp_path / 'docs/images/loss-plotted.png').read_bytes() == png
    assert mod.readme_text(tmp_path / 'README.md', index) == readme
    (tmp_path / 'README.md').write_text(readme.replace('fit()', 'fit(3)'))  # the code shown is not the code run
    assert mod.readme_text(tmp_path / 'README.md', index) != (tmp_path / 'README.md').read_text()


def test_readme_says_the_command_make_test_runs_and_the_quick_loop(pytestconfig):
    """`make test`'s pytest command (the Makefile's, which .ci/run calls) and the quick loop without the tests marked
    slow are the ones README.md tells a contributor about."""
    recipe = re.search(r'^test:.*\n\t(.+)$', (ROOT / 'Makefile').read_text(), re.M)[1]
    assert recipe.startswith('$(PY) -m pytest '), recipe
    flags = [w for w in recipe.split()[3:] if not w.startswith('$(') and w != '-q']
    readme = (ROOT / 'README.md').read_text()
    assert f"`pytest {' '.join(flags)}`" in readme, f"README.md should say that make test runs `pytest {flags}`"
    assert any(m.startswith('slow:') for m in pytestconfig.getini('markers')) and "pytest -m 'not slow'" in readme
    assert 'make test' in (ROOT / '.ci' / 'run').read_text()
