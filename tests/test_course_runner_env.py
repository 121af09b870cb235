"""tools/run_course_notebooks.py, environment rules 5 to 9 (the diffusion notebooks): device, saved models and the
notebooks that make them, sampling cuts, an unused import, the course's cell order.

Synthetic notebooks only: no network, no course files.
"""
import json

import pytest

from conftest import load_tool

rc = load_tool('run_course_notebooks')


def nb_of(*sources):
    cells = [{'id': f'c{i}', 'cell_type': 'code', 'source': s, 'metadata': {}, 'outputs': [], 'execution_count': None}
             for i, s in enumerate(sources, 1)]
    return {'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}


def codes(stem, *sources, **kw):
    return [c['code'] for c in rc.plan(nb_of(*sources), 1, rc.EnvRules(stem, **kw))[1]]


def test_cuda_goes_to_the_default_device_and_course_pickles_load():
    got = codes('19_x', "m = torch.load('models/a.pkl').cuda()\nx = torch.randn(2).cuda()",
                "w = torch.load(p, weights_only=True)")
    assert got[0].splitlines() == [
        "m = torch.load('models/a.pkl', weights_only=False).to(_course_harness.device)",
        'x = torch.randn(2).to(_course_harness.device)']
    assert got[1] == 'w = torch.load(p, weights_only=True)'            # a cell's own choice stays


def test_a_commented_save_runs_only_when_a_later_line_loads_its_file():
    got = codes('22_x', "# torch.save(learn.model, 'models/a.pkl')\nmodel = torch.load('models/a.pkl')",
                "# torch.save(learn.model, mdl_path/'b.pkl')\n# torch.save(learn.model, 'models/never.pkl')",
                "model = torch.load(mdl_path/'b.pkl')",
                "# torch.save(m, 'models/c.pkl')\n# m = torch.load('models/c.pkl')")
    assert got[0].splitlines()[0] == "torch.save(learn.model, 'models/a.pkl')"
    assert got[1].splitlines() == ["torch.save(learn.model, mdl_path/'b.pkl')",
                                   "# torch.save(learn.model, 'models/never.pkl')"]
    assert got[3] == "# torch.save(m, 'models/c.pkl')\n# m = torch.load('models/c.pkl')"   # both commented: kept


def test_sampling_is_cut_in_diffusion_notebooks_only():
    src = ('sz = (2048,1,32,32)\nn_samples = 512\nn_steps = 1000\n'
           'preds = sample(ddim_step, model, sz, steps=100, eta=1.)\nsmall = f(steps=3)')
    assert codes('23_karras', src, n_samples=8, sample_steps=5)[0].splitlines() == [
        'sz = (8, 1, 32, 32)', 'n_samples = 8', 'n_steps = 5',
        'preds = sample(ddim_step, model, sz, steps=5, eta=1.0)', 'small = f(steps=3)']
    assert codes('11_initializing', src, n_samples=8, sample_steps=5)[0] == src   # plot_func(steps=...) etc. untouched


def test_a_schedule_built_from_the_cut_n_steps_keeps_its_1000_levels_and_diffusers_sample_in_few_steps():
    got = codes('20_DDIM', 'n_steps=1000', 'sc = linear_sched(betamax=0.01, n_steps=n_steps)',
                'c = cos_sched(n_steps=500)\nsched = DDPMScheduler(beta_end=0.01)\nsched.set_timesteps(333)',
                'sched.set_timesteps(4)', sample_steps=5)
    assert got[:2] == ['n_steps = 5', 'sc = linear_sched(betamax=0.01)']
    assert got[2].splitlines() == ['c = cos_sched(n_steps=500)',     # a literal size is the cell's own choice
                                   'sched = _course_harness.few_timesteps(DDPMScheduler(beta_end=0.01), 5)',
                                   'sched.set_timesteps(5)']
    assert got[3] == 'sched.set_timesteps(4)'
    assert codes('14_augment', 'sched = DDPMScheduler()')[0] == 'sched = DDPMScheduler()'


def test_the_rules_reach_the_body_of_a_timed_cell():
    got = codes('20_DDIM', '%%time\nx_t = torch.randn(sz).cuda()\nsched.set_timesteps(333)', '%%time\ny = 1',
                '%%bash\necho x.cuda()', sample_steps=5)
    assert got[0].splitlines() == ['%%time', 'x_t = torch.randn(sz).to(_course_harness.device)',
                                   'sched.set_timesteps(5)']
    assert got[1:] == ['%%time\ny = 1', '%%bash\necho x.cuda()']   # untouched: nothing to rewrite, not Python


def test_the_unused_k_diffusion_import_is_dropped():
    assert codes('22_x', 'import torch, k_diffusion as K, math\nimport k_diffusion as K')[0].splitlines() == [
        'import torch, math', 'pass']
    used = 'import k_diffusion as K\nK.sampling'
    assert codes('22_x', used)[0] == used


def test_course_order_fix_moves_the_definitions_before_their_first_use():
    nb = nb_of(*[f'x{i} = {i}' for i in range(1, 66)])
    order = [c['cell'] for c in rc.plan(nb, 1, rc.EnvRules('26_diffusion_unet'))[1]]
    assert order[56:60] == [57, 64, 65, 58] and sorted(order) == list(range(1, 66))
    assert [c['cell'] for c in rc.plan(nb, 1, rc.EnvRules('22_cosine'))[1]] == list(range(1, 66))


def _write(folder, name, *sources):
    import nbformat
    nbformat.write(nbformat.from_dict(nb_of(*sources)), folder / name)


def test_providers_name_the_first_notebook_saving_each_file(tmp_path):
    pytest.importorskip('nbformat')
    _write(tmp_path, '14_a.ipynb', "torch.save(m, 'models/clf.pkl')")
    _write(tmp_path, '17_b.ipynb', "torch.save(m, 'models/clf.pkl')\n# torch.save(m, mdl_path/'d.pkl')",
           "d = torch.load(mdl_path/'d.pkl')")
    assert {k: v.name for k, v in rc.providers(tmp_path).items()} == {'clf.pkl': '14_a.ipynb', 'd.pkl': '17_b.ipynb'}


def test_a_notebook_loading_an_earlier_notebooks_file_runs_that_one_first(tmp_path, capsys, warm_course_kernels):
    for mod in ('nbclient', 'ipykernel', 'nbformat'): pytest.importorskip(mod)
    _write(tmp_path, '14_maker.ipynb', "import torch\nfrom pathlib import Path\nPath('models').mkdir(exist_ok=True)",
           "torch.save({'w': 3}, 'models/clf.pkl')",
           "assert _course_harness.n_train == 64   # a prerequisite only makes the file: diffusion-sized data")
    _write(tmp_path, '19_user.ipynb', "import torch", "assert torch.load('models/clf.pkl')['w'] == 3",
           "x = torch.zeros(2).cuda()")
    out = tmp_path / 'res.json'
    assert warm_course_kernels.main(['--course', str(tmp_path), '--notebooks', '19', '--json', str(out),
                                     '--timeout', '120']) == 0
    res = json.loads(out.read_text())
    assert res['total'] == {'run': 3, 'passed': 3, 'failed': 0, 'skipped': 0}     # the prerequisite is not counted
    assert [(r['notebook'], r.get('prerequisite_for')) for r in res['notebooks']] == [
        ('14_maker.ipynb', '19_user'), ('19_user.ipynb', None)]
    assert '14_maker: 3 cells run, 3 passed, 0 failed in' in capsys.readouterr().out
