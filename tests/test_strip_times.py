"""Committed notebooks show no wall times from the machine that ran them (`tools/run_notebooks.py`)."""
import json
import re
from pathlib import Path

from conftest import load_tool

ROOT = Path(__file__).resolve().parent.parent
HTML = ('<table class="fastprogress"><thead><tr><th>epoch</th><th>train_loss</th><th>valid_loss</th><th>lr</th>'
        '<th>time</th></tr></thead><tbody><tr><td>0</td><td>0.721</td><td>0.488</td><td>0.01</td><td>00:51</td>'
        '</tr><tr><td>1</td><td>0.488</td><td>0.402</td><td>4e-07</td><td>00:02</td></tr></tbody></table>')


def test_time_column_and_progress_times_go_and_the_rest_stays():
    strip = load_tool('run_notebooks').strip_wall_times
    out = strip(HTML)
    assert '<th>time</th>' not in out and '00:51' not in out and '00:02' not in out
    assert out.count('<td>') == 8 and '<th>valid_loss</th>' in out and '<td>0.402</td>' in out
    pretty = HTML.replace('<t', '\n    <t')                             # fastprogress's indented form
    assert strip(pretty).count('<td>') == 8 and '00:51' not in strip(pretty)
    assert strip('epoch train_loss valid_loss lr time\n0 0.739 0.732 1e-05 00:33\n') == \
        'epoch train_loss valid_loss lr\n0 0.739 0.732 1e-05\n'
    assert strip('100.00% [2/2 01:48&lt;00:00]') == '100.00% [2/2]'
    assert strip('[20/59 00:12<00:24 0.512]') == '[20/59 0.512]'
    kept = '<table><tr><th>run</th><th>seconds</th></tr><tr><td>a</td><td>12.5</td></tr></table> at 10:30'
    assert strip(kept) == kept                                            # a notebook's own comparison stays


def test_committed_notebooks_show_no_training_wall_times():
    found = []
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        for cell in json.loads(nb.read_text())['cells']:
            for out in cell.get('outputs', []):
                text = ''.join(out.get('text', '')) + ''.join(
                    ''.join(v) for k, v in out.get('data', {}).items() if k.startswith('text/'))
                if re.search(r'<th>time</th>|\[\d+/\d+ \d+:\d\d|^\d+(?: \S+)+ \d+:\d\d$', text, re.M):
                    found.append(nb.name)
    assert not found, f"wall times in the outputs of {sorted(set(found))}: tools/run_notebooks.py --strip-times"
