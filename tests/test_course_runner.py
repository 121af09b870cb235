"""tools/run_course_notebooks.py: how it rewrites course cells, its kernel-side helpers, and one tiny run.

Synthetic notebooks only: no network, no course files.
"""
import json
import sys
import types

import pytest

from conftest import load_tool

rc = load_tool('run_course_notebooks')


def nb_of(*sources):
    """A notebook dict (as nbformat reads it) with one code cell per source; a markdown cell first."""
    cells = [{'id': 'c0', 'cell_type': 'markdown', 'source': '# A course notebook', 'metadata': {}}]
    cells += [{'id': f'c{i}', 'cell_type': 'code', 'source': s, 'metadata': {}, 'outputs': [], 'execution_count': None}
              for i, s in enumerate(sources, 1)]
    return {'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}


def by_cell(cells): return {c['cell']: c for c in cells}


def test_export_cell_takes_its_definitions_from_the_default_exp_module():
    module, cells = rc.plan(nb_of(
        '#| default_exp learner',
        '#|export\nimport math\nclass Foo: pass\n_hidden = 1\ndef _helper(): pass\nBAR, baz = 2, 3',
        '_helper()'))
    assert module == 'learner'
    code = by_cell(cells)[3]['code']
    assert code.splitlines()[0] == 'import math'                   # imports run as they are
    assert "take('miniai.learner', ['Foo', '_helper', 'BAR', 'baz'], globals())" in code
    assert '_hidden' not in code                                   # private and never used later: not asked for
    assert 'class Foo' not in code and 'def _helper' not in code   # no course definition runs


def test_export_cell_without_definitions_and_plain_cells_run_unchanged():
    src_imports = '#| export\nfrom torch import nn  # keep this comment'
    src_plain = 'x = 1  # a comment\nx'
    _, cells = rc.plan(nb_of('#|default_exp conv', src_imports, src_plain))
    assert [c['code'] for c in cells[1:]] == [src_imports, src_plain]


def test_data_epochs_and_workers_are_cut():
    _, cells = rc.plan(nb_of(
        'dsd = load_dataset(name)\nb = load_dataset_builder("fashion_mnist")',
        'learn.fit(5)\nlearn.fit(1)\nlearn.fit(epochs, cbs=cbs)\nlearn.fit(n_epochs=3)',
        'dls = DataLoaders.from_dd(tds, bs, num_workers=4)'), max_epochs=2)
    data, fits, dls = (c['code'] for c in cells)
    assert '_course_harness.load_dataset(name)' in data
    assert "_course_harness.load_dataset_builder('fashion_mnist')" in data
    assert fits.splitlines() == ['learn.fit(2)', 'learn.fit(1)', 'learn.fit(_course_harness.epochs(epochs), cbs=cbs)',
                                 'learn.fit(n_epochs=2)']
    assert 'num_workers=0' in dls


def test_build_cells_are_skipped_with_a_reason_and_empty_cells_ignored():
    _, cells = rc.plan(nb_of('import nbdev; nbdev.nbdev_export()', '   ', '%time y = 2'))
    assert len(cells) == 2
    assert 'nbdev_export' in cells[0]['skip']
    assert cells[1]['skip'] is None and cells[1]['code'] == '%time y = 2'   # magics are fine


def test_cuda_calls_go_to_the_default_device_and_course_pickles_load():
    code = rc.rewrite_code("m = torch.load(path).cuda()\nx.cuda(0)\ny = torch.load(p, weights_only=True)")
    assert code.splitlines() == ["m = torch.load(path, weights_only=False).to(_course_harness.device)",
                                 "x.cuda(0)",                               # an explicit GPU index stays
                                 "y = torch.load(p, weights_only=True)"]    # an explicit choice stays


def test_a_commented_save_comes_back_only_where_a_later_line_loads_its_file():
    _, cells = rc.plan(nb_of(
        "# torch.save(learn.model, mdl_path/'a.pkl')\n#torch.save(m, 'unused.pkl')",
        "  # torch.save(m, 'b.pkl')\nm = torch.load('b.pkl')",
        "m = torch.load(mdl_path / 'a.pkl')",
        "# torch.save(m, 'c.pkl')\n# m = torch.load('c.pkl')",            # the load is commented out too
        "m2 = torch.load('d.pkl')\n# torch.save(m2, 'd.pkl')"))          # saved after its only load
    a, b, _, c, d = (c['code'].splitlines() for c in cells)
    assert a == ["torch.save(learn.model, mdl_path/'a.pkl')", "#torch.save(m, 'unused.pkl')"]
    assert b[0] == "  torch.save(m, 'b.pkl')"
    assert c == ["# torch.save(m, 'c.pkl')", "# m = torch.load('c.pkl')"]
    assert d == ["m2 = torch.load('d.pkl', weights_only=False)"]     # the save stays a comment (then dropped)
    assert "# torch.save(m2, 'd.pkl')" in rc.uncomment_saves(cells[4]['source'], set())


def test_every_environment_rewrite_has_its_reason():
    assert set(rc.ENVIRONMENT) == {'.cuda()', 'torch.load(weights_only=False)', 'un-commented torch.save'}
    assert all(len(reason) > 30 for reason in rc.ENVIRONMENT.values())
    assert all(k in rc.__doc__ for k in ('.cuda()', 'weights_only=False', '# torch.save(obj, path)'))


@pytest.fixture
def harness():
    ns = {}
    exec(rc.PRELUDE, ns)
    return ns['_CourseHarness'](n_train=3, n_valid=2, max_epochs=1)


@pytest.fixture
def fake_module(monkeypatch):
    mod = types.ModuleType('fake_course_mod')
    mod.Public, mod.Unlisted, mod._private = object(), object(), object()
    mod.__all__ = ['Public']
    monkeypatch.setitem(sys.modules, 'fake_course_mod', mod)
    return mod


def test_take_binds_what_exists_and_names_what_is_missing_or_unexported(harness, fake_module):
    ns = {}
    harness.take('fake_course_mod', ['Public', '_private'], ns)
    assert ns == {'Public': fake_module.Public, '_private': fake_module._private}
    ns = {}
    with pytest.raises(ImportError, match=r"has no Absent.*__all__ leaves out Unlisted"):
        harness.take('fake_course_mod', ['Public', 'Absent', 'Unlisted'], ns)
    assert set(ns) == {'Public', 'Unlisted'}                   # later cells still get what exists


def test_cuda_goes_to_miniais_default_device(harness):
    from miniai.device import def_device
    assert harness.device == def_device


def test_epochs_caps_ints_only(harness):
    assert [harness.epochs(n) for n in (0, 1, 5)] == [0, 1, 1]
    assert harness.epochs(2.5) == 2.5 and harness.epochs(True) is True


def test_few_timesteps_sets_the_schedulers_sampling_steps_from_step_999(harness):
    class Scheduler:   # as diffusers' schedulers space their sampling steps
        spacing = 'leading'
        def register_to_config(self, timestep_spacing): self.spacing = timestep_spacing
        def set_timesteps(self, n):
            self.timesteps = (list(range(999, -1, -1000 // n)) if self.spacing == 'trailing' else
                              list(range(1000 - 1000 // n, -1, -1000 // n)))
    sched = harness.few_timesteps(Scheduler(), 4)
    assert isinstance(sched, Scheduler) and sched.timesteps == [999, 749, 499, 249]


def test_fashion_mnist_comes_from_miniai_cut_to_size(harness, monkeypatch):
    datasets = pytest.importorskip('datasets')
    import miniai.datasets
    dd = datasets.DatasetDict(train=datasets.Dataset.from_dict({'label': list(range(10))}),
                              test=datasets.Dataset.from_dict({'label': list(range(8))}))
    monkeypatch.setattr(miniai.datasets, 'load_fashion_mnist', lambda: dd)
    got = harness.load_dataset('fashion_mnist')
    assert (len(got['train']), len(got['test'])) == (3, 2)
    assert got['train']['label'] == [0, 1, 2]
    assert harness.load_dataset_builder('fashion_mnist').info is got['train'].info


def test_a_tiny_course_notebook_runs_cell_by_cell(tmp_path, capsys, warm_course_kernels):
    for mod in ('nbclient', 'ipykernel', 'nbformat'): pytest.importorskip(mod)
    import nbformat
    nb = nbformat.from_dict(nb_of(
        '#| default_exp core',
        '#| export\nclass Callback: order = 99',                       # miniai.core has it
        'assert Callback.__module__ == "miniai.core", Callback.__module__',
        '#| export\ndef not_in_miniai(): pass',                      # miniai.core lacks it: fails
        '1/0',                                                       # fails; the next cell still runs
        'print("after")',
        'import nbdev; nbdev.nbdev_export()'))
    nbformat.write(nb, tmp_path / '09_tiny.ipynb')
    out = tmp_path / 'res.json'
    assert warm_course_kernels.main(['--course', str(tmp_path), '--notebooks', '09', '--json', str(out),
                                     '--timeout', '120']) == 1
    res = json.loads(out.read_text())
    assert res['total'] == {'run': 6, 'passed': 4, 'failed': 2, 'skipped': 1}
    cells = by_cell(res['notebooks'][0]['cells'])
    assert cells[5]['error'] == 'ImportError: miniai.core has no not_in_miniai'
    assert cells[6]['error'].startswith('ZeroDivisionError') and cells[7]['status'] == 'passed'
    assert cells[8]['status'] == 'skipped'
    assert '09_tiny: 6 cells run, 4 passed, 2 failed, 1 skipped' in capsys.readouterr().out
