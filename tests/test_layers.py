"""The package's import graph, read with `ast` (imports inside functions included): layered and acyclic.

Layers, bottom to top: the base (errors, files, device, the event system); data, models and optimizers; callbacks;
the learner; inference, interpretation and plots; the command line. A module may import its own layer or a lower
one, never a higher one, and no chain of imports may come back to where it started. A name a course module must
export from a higher layer is re-exported by a module of that layer, never imported upward.
"""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / 'miniai'

LAYERS = {
    0: ['errors', 'files', 'device', 'core', 'metrics', 'launch'],
    1: ['datasets', 'preprocess', 'layers', 'conv', 'resnet', 'models', 'training', 'sgd.optimizers',
        'sgd.schedules', 'sgd.steppers', 'diffusion'],
    2: ['callbacks', 'checkpoint', 'stopping', 'gradients', 'tensorboard', 'wandb', 'ema', 'accel', 'augment',
        'activations', 'init', 'lr_finder', 'sgd.callbacks', 'sgd', 'distributed', 'predictions'],
    3: ['learner'],
    4: ['inference', 'interpret', 'train_plots', 'fid', 'imports'],
    5: ['cli', 'predict_cli', '__main__'],
}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name below `miniai` (a package by its own name)."""
    out = {}
    for p in PKG.rglob('*.py'):
        parts = p.relative_to(PKG).with_suffix('').parts
        if parts[-1] == '__init__': parts = parts[:-1]
        if parts and parts[-1] != '_modidx': out['.'.join(parts)] = p
    return out


def layer(mod: str) -> int:
    """A module's layer: its own entry, else its package's (`datasets.idx` is in `datasets`' layer)."""
    parts = mod.split('.')
    for i in range(len(parts), 0, -1):
        for n, names in LAYERS.items():
            if '.'.join(parts[:i]) in names: return n
    raise KeyError(mod)


def imports(mod: str, path: Path, known) -> set[str]:
    """The package modules `mod` imports, anywhere in its file."""
    pkg = mod.split('.') if path.name == '__init__.py' else mod.split('.')[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level: base = pkg[:len(pkg) - node.level + 1] if node.level > 1 else pkg
            elif (node.module or '').split('.')[0] == 'miniai': base, node = [], node
            else: continue
            target = base + (node.module.split('.') if node.module and node.level else
                             node.module.split('.')[1:] if node.module else [])
            cands = ['.'.join(target)] + ['.'.join(target + [a.name]) for a in node.names]
        elif isinstance(node, ast.Import):
            cands = ['.'.join(a.name.split('.')[1:]) for a in node.names if a.name.split('.')[0] == 'miniai']
        else: continue
        out |= {c for c in cands if c in known and c != mod and c and not mod.startswith(c + '.')}
    return out


GRAPH = {m: imports(m, p, modules()) for m, p in modules().items()}


def test_every_module_has_a_layer():
    missing = [m for m in GRAPH if m and not any(m == n or m.startswith(n + '.') for ns in LAYERS.values() for n in ns)]
    assert not missing, f"give these modules a layer in LAYERS: {missing}"


@pytest.mark.parametrize('mod', sorted(m for m in GRAPH if m))
def test_no_import_goes_up_a_layer(mod):
    up = sorted(f'{t} (layer {layer(t)})' for t in GRAPH[mod] if layer(t) > layer(mod))
    assert not up, f"{mod} (layer {layer(mod)}) imports upward: {up}"


def test_the_graph_has_no_cycle():
    state, stack, cycles = {}, [], []
    def visit(m):
        state[m] = 'open'; stack.append(m)
        for t in sorted(GRAPH.get(m, ())):
            if state.get(t) == 'open': cycles.append(stack[stack.index(t):] + [t])
            elif t not in state: visit(t)
        stack.pop(); state[m] = 'done'
    for m in sorted(GRAPH): visit(m) if m not in state else None
    assert not cycles, 'import cycles: ' + '; '.join(' -> '.join(c) for c in cycles)


def test_the_reader_sees_lazy_and_relative_imports():
    """The graph is only as good as its reader: a function-level `from ..x import y` must count."""
    src = "def f():\n    from ..core import Order\n    from miniai import device\n"
    tmp = PKG.parent / 'tests' / '_probe_module.py'
    try:
        tmp.write_text(src)
        known = {'core', 'device', 'sgd.callbacks'}
        assert imports('sgd.callbacks', tmp, known) == {'core', 'device'}
    finally: tmp.unlink()
