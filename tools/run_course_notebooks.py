#!/usr/bin/env python
"""Run the fast.ai course's own notebooks against miniai, cell by cell, and count what runs.

    python tools/run_course_notebooks.py --course path/to/course22p2 --notebooks 05 08 09 10 11 12 13 14
    python tools/run_course_notebooks.py --course ... --notebooks 14 --json results.json --save-executed out/

`--course` is a checkout of the course repository ("Practical Deep Learning for Coders, part 2", fastai/course22p2)
or any folder holding its notebooks (`09_learner.ipynb`, ...), directly or under `nbs/`. Each notebook runs top to
bottom in a fresh Jupyter kernel of this Python, with errors allowed: a failing cell is recorded and the next one
runs, as "Run all" with errors allowed would. The kernel inherits this process's environment (PYTHONPATH included),
so it imports whichever miniai this Python would; the run prints that module's path.

The course builds its library inside these notebooks. To test miniai instead, a few rules rewrite the cells before
they run (`--show-rewrites` prints every rewritten cell):

1. Definitions come from miniai. In a `#| export` cell, each top-level definition (`def`, `class`, or assignment
   to a name) is replaced by taking that name from `miniai.<module>`, the module that the notebook's
   `#| default_exp` names. The cell fails if miniai lacks the name, or leaves a public name out of the module's
   `__all__` (so that `from miniai.<module> import *` would not give it). Private helpers (`_name`) are taken only
   when a later cell uses them by name. Everything else in the cell (its imports) runs unchanged.
2. Data: `load_dataset("fashion_mnist")` becomes `miniai.datasets.load_fashion_mnist()` (the same splits and
   features, read from local files), and `load_dataset_builder("fashion_mnist")` gives that dataset's `info`.
   Each split is then cut to its first `--n-train` / `--n-valid` rows (`.select(range(n))`). Other dataset names
   go to the Hugging Face `datasets` functions unchanged.
3. Time: `<anything>.fit(n, ...)` trains at most `--max-epochs` epochs (`n` becomes `min(n, max_epochs)`), and
   `num_workers=<anything>` becomes `num_workers=0` (worker processes only cost time on a few batches). A cell
   that runs longer than `--timeout` seconds is interrupted and counted as failed.
A rewritten cell runs as Python regenerated from its syntax tree (same code, comments dropped); a cell that no rule
touches runs exactly as written. In a cell that starts with `%%time`, `%%timeit` or `%%capture` the rules rewrite
the body and the magic line stays.
4. Skipped, counted and listed: cells that only serve the course's own build (`nbdev_export()`), and empty cells
   (not counted). Nothing else is skipped.
5. Environment: the course ran on a CUDA GPU with the torch of 2022. These rewrites change only the machine and
   the torch version a cell meets, never what it asks of miniai (`ENVIRONMENT` lists them with their reasons):
   - `<anything>.cuda()` becomes `<anything>.to(<miniai's default device>)`: no GPU is needed to run the cells.
   - `torch.load(f)` becomes `torch.load(f, weights_only=False)`: since torch 2.6, `torch.load` refuses whole
     pickled models unless told the file is trusted, and the course loads only models its own cells saved.
   - A commented-out `# torch.save(obj, path)` line is un-commented when a later line of the notebook
     `torch.load`s the same `path`: the course saved those models once and commented the line out, so without
     it the load finds no file.

The diffusion notebooks (15 on) also need files that earlier notebooks made, and far more compute per image; these
rules (`EnvRules`) change the data, the sizes and the files a cell meets, never what it asks of miniai:

6. Shared files: every notebook of a run sees one shared `models/` folder, and a notebook that loads a file made
   by an earlier course notebook (`models/data_aug2.pkl`, the Fashion-MNIST classifier that 14_augment trains and
   the FID cells use) has that notebook run first, as a prerequisite, unless the run made the file already. A
   prerequisite keeps `--n-diffusion` rows per split (it only has to make the file), and is reported but not
   counted in the overall total.
7. Diffusion cut (notebooks 15 on): each split keeps `--n-diffusion` rows (their U-Nets cost far more per image
   than 09 to 14's classifiers); a literal batch of samples, `sz = (N, ...)` or `n_samples = N`, is cut to
   `--n-samples`, and a literal `steps=N` argument to `--sample-steps`. So is `n_steps = N`, the number of noise
   levels that a DDPM notebook's sampler walks one model call at a time: its schedule keeps all 1000 levels
   (`linear_sched`'s own default; a `..._sched(n_steps=n_steps)` call loses that argument, so that it does too),
   and training and sampling use the first N, the least noisy. A diffusers `DDPMScheduler` or `DDIMScheduler`
   samples in `--sample-steps` steps instead of its 1000 training steps, the first of them still step 999
   (diffusers' "trailing" spacing), and `set_timesteps(N)` is cut to that.
8. `import k_diffusion as K` is dropped where no cell uses `K`: the notebooks never do, and the package's
   dependency dctorch requires numpy below 2.
9. Course order: 26_diffusion_unet calls `sample_lms` (cell 58 on) before the cells that import `integrate` and
   define it (64 and 65); the course ran those first, so the runner does too (`ORDER_FIXES`).

Outputs: one line per failing cell as it happens, a summary per notebook and overall ("N cells run, N passed,
N failed"), and with `--json OUT` the details of every code cell: `cell` (its 1-based position among all the
notebook's cells, as the failures are reported), status, seconds, the error's last line, the traceback's tail, the
code that ran. The exit status is 1 when any cell failed.

Needs the `dev` extra (nbclient, ipykernel, nbformat) and the `course` extra (timm, which the course's 13_resnet
trains, and the other packages only the course's notebooks import: scipy, diffusers, einops, seaborn):
`pip install -e '.[dev,course]'`. With the defaults (512 training images, one epoch per fit) notebooks 05 and 08 to
14 (420 cells) took 16 minutes on one core (`OMP_NUM_THREADS=1`) of a 2-core machine that others were using too;
19_DDPM_v3, 22_cosine, 23_karras and 26_diffusion_unet (64 rows, 16 samples, 10 sampling steps) 14 minutes,
with 14_augment first as their prerequisite.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

EXPORT = re.compile(r'^\s*#\s*\|\s*export[si]?\b', re.MULTILINE)       # nbdev: `#| export`, `#|exports`, `#| exporti`
DEFAULT_EXP = re.compile(r'^\s*#\s*\|\s*default_exp\s+([\w.]+)', re.MULTILINE)
BUILD_ONLY = re.compile(r'\bnbdev_export\s*\(|\bnotebook2script\s*\(')
# the course's Fashion-MNIST notebooks that run on miniai: the datasets and autoencoder lessons, then the learner
# to augmentation lessons (18_fid is not among them: it trains nothing, and scores with models saved by other
# notebooks and with Inception weights downloaded from the internet)
DEFAULT_NOTEBOOKS = ['05', '08', '09', '10', '11', '12', '13', '14']
HARNESS = '_course_harness'                                     # the kernel-side helper object (see PRELUDE)
KERNEL_NAME = 'miniai-course-harness'


# ------------------------------------------------------------------------------------------- rewriting the cells
def python_source(src: str) -> str:
    """`src` with IPython syntax (`%time`, `!ls`) turned into plain Python, as the kernel would run it."""
    from IPython.core.inputtransformer2 import TransformerManager
    return TransformerManager().transform_cell(src)


def defined_names(stmt: ast.stmt) -> list[str]:
    """The names a top-level statement defines: a def/class name, or the names an assignment binds."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): return [stmt.name]
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(
        stmt, (ast.AnnAssign, ast.AugAssign)) else []
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def rewrite_export(src: str, module: str, used_later: str) -> str:
    """An export cell with its definitions taken from `module` (rule 1); `used_later` is the later cells' code."""
    tree = ast.parse(python_source(src))
    body, names = [], []
    for stmt in tree.body:
        found = defined_names(stmt)
        if not found:
            body.append(ast.unparse(stmt)); continue
        names += [n for n in found if n not in names and (not n.startswith('_') or re.search(rf'\b{n}\b', used_later))]
        if 'TAKE' not in body: body.append('TAKE')
    if not names and len(body) == len(tree.body): return src      # nothing defined: the cell runs as it is
    take = f"{HARNESS}.take({module!r}, {names!r}, globals())  # the definitions, from miniai"
    return '\n'.join(take if line == 'TAKE' else line for line in body if line != 'TAKE' or names)


class _Rewriter(ast.NodeTransformer):
    """Rules 2 and 3 on one cell's syntax tree; `changed` says whether anything was rewritten."""

    def __init__(self, max_epochs: int): self.max_epochs, self.changed = max_epochs, False

    def cap(self, v):
        """`v` limited to `max_epochs`: a literal is replaced by the limit, an expression is wrapped."""
        if isinstance(v, ast.Constant) and isinstance(v.value, int):
            if v.value <= self.max_epochs: return v
            self.changed = True
            return ast.Constant(self.max_epochs)
        self.changed = True
        return ast.Call(ast.Attribute(ast.Name(HARNESS, ast.Load()), 'epochs', ast.Load()), [v], [])

    def visit_Call(self, node):
        self.generic_visit(node)
        f = node.func
        if isinstance(f, ast.Name) and f.id in ('load_dataset', 'load_dataset_builder'):
            node.func = ast.Attribute(ast.Name(HARNESS, ast.Load()), f.id, ast.Load()); self.changed = True
        if isinstance(f, ast.Attribute) and f.attr == 'fit':
            if node.args: node.args[0] = self.cap(node.args[0])
            for kw in node.keywords:
                if kw.arg == 'n_epochs': kw.value = self.cap(kw.value)
        for kw in node.keywords:
            if kw.arg == 'num_workers' and not (isinstance(kw.value, ast.Constant) and kw.value.value == 0):
                kw.value = ast.Constant(0); self.changed = True
        return node


# ------------------------------------------------------------------------ rule 5: the environment of the cells
ENVIRONMENT = {
    '.cuda()': "the course assumes a CUDA GPU; `.to(<default device>)` runs the same code on this machine",
    'torch.load(weights_only=False)': "torch >= 2.6 refuses pickled models by default; these are the course's own",
    'un-commented torch.save': "a later cell loads the file that the course's commented-out save line writes",
}


class _EnvRewriter(ast.NodeTransformer):
    """Rule 5 on one cell's syntax tree: `.cuda()` and `torch.load`; `changed` says whether anything was."""

    def __init__(self): self.changed = False

    def visit_Call(self, node):
        self.generic_visit(node)
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == 'cuda' and not node.args and not node.keywords:
            device = ast.Attribute(ast.Name(HARNESS, ast.Load()), 'device', ast.Load())
            node = ast.Call(ast.Attribute(f.value, 'to', ast.Load()), [device], []); self.changed = True
        elif _is_torch_load(node) and not any(kw.arg == 'weights_only' for kw in node.keywords):
            node.keywords.append(ast.keyword('weights_only', ast.Constant(False))); self.changed = True
        return node


def _is_torch_load(node) -> bool:
    f = getattr(node, 'func', None)
    return (isinstance(node, ast.Call) and isinstance(f, ast.Attribute) and f.attr == 'load'
            and isinstance(f.value, ast.Name) and f.value.id == 'torch')


COMMENTED_SAVE = re.compile(r'^(?P<indent>[ \t]*)#\s*(?P<call>torch\.save\(.*\))\s*$', re.MULTILINE)


def loaded_paths(src: str) -> set[str]:
    """The path expressions (as source text) of the `torch.load(path, ...)` calls that `src` runs."""
    try: tree = ast.parse(python_source(src))
    except SyntaxError: return set()
    return {ast.unparse(n.args[0]) for n in ast.walk(tree) if _is_torch_load(n) and n.args}


def _saved_path(call: str) -> str | None:
    try: node = ast.parse(call, mode='eval').body
    except SyntaxError: return None
    args = node.args[1:2] or [kw.value for kw in node.keywords if kw.arg == 'f']
    return ast.unparse(args[0]) if args else None


def uncomment_saves(src: str, loaded_later: set[str]) -> str:
    """`src` with each commented-out `torch.save(obj, path)` line restored when `path` is loaded further down:
    by a line after it in `src` (each read on its own) or in `loaded_later`, the paths the later cells load."""
    def restore(m):
        below = set().union(*(loaded_paths(line.strip()) for line in src[m.end():].splitlines()), loaded_later)
        return m['indent'] + m['call'] if _saved_path(m['call']) in below else m[0]
    return COMMENTED_SAVE.sub(restore, src)


# cell magics whose body is Python that runs in the notebook's namespace: the rules apply to the body
BODY_MAGIC = re.compile(r'\A(?P<magic>[ \t]*%%(?:time|timeit|capture)\b[^\n]*\n)(?P<body>.*)\Z', re.S)


def under_magic(src: str, rewrite) -> str:
    """`rewrite(src)`, or for a cell that starts with `%%time` (`%%timeit`, `%%capture`) its body rewritten and the
    magic line kept: IPython would hand the body to the magic as a string, out of the rules' reach."""
    m = BODY_MAGIC.match(src)
    if not m: return rewrite(src)
    body = rewrite(m['body'])
    return src if body == m['body'] else m['magic'] + body


def rewrite_code(src: str, max_epochs: int = 1) -> str:
    """`src` with rules 2, 3 and 5 applied; unchanged (comments and all) when none applies."""
    def rewrite(src):
        try: tree = ast.parse(python_source(src))
        except SyntaxError: return src            # the kernel reports it, as it would in the course
        rw, env = _Rewriter(max_epochs), _EnvRewriter()
        tree = env.visit(rw.visit(tree))
        return ast.unparse(ast.fix_missing_locations(tree)) if rw.changed or env.changed else src
    return under_magic(src, rewrite)


def plan(nb: dict, max_epochs: int = 1, env: EnvRules | None = None) -> tuple[str | None, list[dict]]:
    """The notebook's `default_exp` module and, for each non-empty code cell, what runs: a dict with `cell` (its 1-based
    position among the notebook's cells), `source`, `code` (what the kernel runs) and `skip` (a reason, or None)."""
    cells = [(i, ''.join(c['source']) if isinstance(c['source'], list) else c['source'])
             for i, c in enumerate(nb['cells']) if c['cell_type'] == 'code']
    cells = [(i, s) for i, s in cells if s.strip()]
    module = next((m.group(1) for _, s in cells if (m := DEFAULT_EXP.search(s))), None)
    out = []
    loads = [loaded_paths(s) for _, s in cells]
    for k, (i, src) in enumerate(cells):
        item = {'cell': i + 1, 'source': src, 'code': src, 'skip': None}
        if BUILD_ONLY.search(src): item['skip'] = 'builds the course library (nbdev_export)'
        else:
            code = uncomment_saves(src, set().union(*loads[k + 1:]))     # rule 5
            if EXPORT.search(src) and module:
                code = rewrite_export(src, f'miniai.{module}', '\n'.join(s for _, s in cells[k + 1:]))
            item['code'] = rewrite_code(code, max_epochs)
        out.append(item)
    return module, env.apply(out) if env else out


# ------------------------------------------------------------------ rules 6 to 9: the diffusion notebooks
LOAD_CALL = re.compile(r'torch\.load\((?P<args>[^)]*)\)')
SAVE_CALL = re.compile(r'torch\.save\((?P<args>[^)]*)\)')
FILE_NAME = re.compile(r"""['"]([^'"]+)['"]""")
ORDER_FIXES = {  # notebook: (cells to run earlier, the cell they must precede), as the course ran them
    '26_diffusion_unet': ((64, 65), 58),
}


def _files(pattern, code: str) -> set[str]:
    """Base names of the files that the (uncommented) `torch.save`/`torch.load` calls of `code` name."""
    lines = '\n'.join(ln for ln in code.splitlines() if not ln.lstrip().startswith('#'))
    return {n.rsplit('/', 1)[-1] for m in pattern.finditer(lines) for n in FILE_NAME.findall(m['args'])}


class _DiffusionRewriter(ast.NodeTransformer):
    """Rules 7 and 8 on one cell's syntax tree."""

    DIFFUSERS_SCHEDULERS = ('DDPMScheduler', 'DDIMScheduler')

    def __init__(self, rules: EnvRules, unused_modules: set[str]):
        self.rules, self.unused, self.changed = rules, unused_modules, False

    def cap(self, node, limit):
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value > limit:
            self.changed = True
            return ast.Constant(limit)
        return node

    def visit_Call(self, node):
        self.generic_visit(node)
        if not self.rules.cut_sampling: return node
        for kw in node.keywords:
            if kw.arg == 'steps': kw.value = self.cap(kw.value, self.rules.sample_steps)
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ''
        if name.endswith('_sched'):   # a schedule built with the (cut) n_steps keeps its own 1000 levels
            keep = [kw for kw in node.keywords if not (kw.arg == 'n_steps' and isinstance(kw.value, ast.Name)
                                                         and kw.value.id == 'n_steps')]
            if len(keep) < len(node.keywords): node.keywords, self.changed = keep, True
        if name == 'set_timesteps' and node.args:   # a diffusers scheduler's number of sampling steps
            node.args[0] = self.cap(node.args[0], self.rules.sample_steps)
        if name in self.DIFFUSERS_SCHEDULERS:        # sampled over all its 1000 training steps unless told
            self.changed = True
            return ast.Call(ast.Attribute(ast.Name(HARNESS, ast.Load()), 'few_timesteps', ast.Load()),
                            [node, ast.Constant(self.rules.sample_steps)], [])
        return node

    def visit_Assign(self, node):
        self.generic_visit(node)
        names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        if self.rules.cut_sampling and 'sz' in names and isinstance(node.value, ast.Tuple) and node.value.elts:
            node.value.elts[0] = self.cap(node.value.elts[0], self.rules.n_samples)
        if self.rules.cut_sampling and 'n_samples' in names:
            node.value = self.cap(node.value, self.rules.n_samples)
        if self.rules.cut_sampling and 'n_steps' in names:
            node.value = self.cap(node.value, self.rules.sample_steps)
        return node

    def visit_Import(self, node):
        keep = [a for a in node.names if a.name not in self.unused]
        if len(keep) == len(node.names): return node
        self.changed = True
        return ast.Import(keep) if keep else ast.Pass()


class EnvRules:
    """Rules 6 to 9 for the notebook `stem` (its file name without `.ipynb`): `apply` rewrites `plan`'s cells."""
    UNUSED_IMPORTS = {'k_diffusion': 'K'}             # module: the alias the course imports it as

    def __init__(self, stem: str, n_samples: int = 16, sample_steps: int = 10, prerequisite: bool = False):
        self.stem, self.n_samples, self.sample_steps, self.prerequisite = stem, n_samples, sample_steps, prerequisite
        self.cut_sampling = stem[:2].isdigit() and int(stem[:2]) >= 15

    def apply(self, cells: list[dict]) -> list[dict]:
        run = [c for c in cells if c['skip'] is None]
        every = '\n'.join(c['code'] for c in run)
        unused = {m for m, alias in self.UNUSED_IMPORTS.items() if not re.search(rf'\b{alias}\.', every)}
        for c in run: c['code'] = self.rewrite(c['code'], unused)
        return self.reorder(cells)

    def rewrite(self, src: str, unused: set[str]) -> str:
        def rewrite(src):
            try: tree = ast.parse(python_source(src))
            except SyntaxError: return src
            rw = _DiffusionRewriter(self, unused)
            tree = rw.visit(tree)
            return ast.unparse(ast.fix_missing_locations(tree)) if rw.changed else src
        return under_magic(src, rewrite)

    def reorder(self, cells: list[dict]) -> list[dict]:
        if self.stem not in ORDER_FIXES: return cells
        early, before = ORDER_FIXES[self.stem]
        moved = [c for c in cells if c['cell'] in early]
        rest = [c for c in cells if c['cell'] not in early]
        at = next(i for i, c in enumerate(rest) if c['cell'] == before)
        return rest[:at] + moved + rest[at:]

    def saves_and_loads(self, cells: list[dict]) -> tuple[set[str], set[str]]:
        """The base names of the files the planned `cells` save and load."""
        code = '\n'.join(c['code'] for c in cells if c['skip'] is None)
        return _files(SAVE_CALL, code), _files(LOAD_CALL, code)


def env_rules(path: Path, args, prerequisite: bool = False) -> EnvRules:
    return EnvRules(path.stem, getattr(args, 'n_samples', 16), getattr(args, 'sample_steps', 10), prerequisite)


def providers(course: Path, max_epochs: int = 1) -> dict[str, Path]:
    """For each file a course notebook saves (after rule 5), the first notebook (in file-name order) saving it."""
    import nbformat
    found = {}
    for path in sorted({p for d in (course, course / 'nbs') for p in d.glob('[0-9]*.ipynb')}, key=lambda p: p.name):
        rules = env_rules(path, None)
        for name in rules.saves_and_loads(plan(nbformat.read(path, as_version=4), max_epochs, rules)[1])[0]:
            found.setdefault(name, path)
    return found


def run_with_prerequisites(path: Path, args, kernel_dir: Path, root: Path, ran: dict, needed_by: str | None = None,
                           known: dict | None = None) -> list[dict]:
    """Run `path` in its own folder under `root`, with `models/` linked to the run's shared `root/models`; first,
    each notebook that makes a file `path` loads and the run has not made (rule 6). Returns the new records
    (a prerequisite's has `prerequisite_for`); `ran` maps each notebook run so far to its record."""
    import nbformat
    if path.stem in ran:
        if needed_by is None: ran[path.stem].pop('prerequisite_for', None)   # run as a prerequisite: now it counts
        return []
    rules = env_rules(path, args, prerequisite=needed_by is not None)
    saves, loads = rules.saves_and_loads(plan(nbformat.read(path, as_version=4), args.max_epochs, rules)[1])
    out, shared = [], root / 'models'
    shared.mkdir(exist_ok=True)
    missing = sorted(f for f in loads - saves if not (shared / f).exists())
    if missing:
        known = known if known is not None else providers(args.course, args.max_epochs)
        for f in missing:
            prov = known.get(f)
            if prov is not None and prov.stem not in ran and prov != path:
                out += run_with_prerequisites(prov, args, kernel_dir, root, ran, needed_by=path.stem, known=known)
    workdir = root / path.stem
    workdir.mkdir()                                      # the files a notebook writes
    (workdir / 'models').symlink_to(shared, target_is_directory=True)
    t1 = time.perf_counter()
    rec = run_notebook(path, args, kernel_dir, workdir, rules)
    rec['seconds'] = round(time.perf_counter() - t1, 1)
    if needed_by: rec['prerequisite_for'] = needed_by
    ran[path.stem] = rec
    skipped = '; '.join(f"cell {c['cell']}: {c['skip']}" for c in rec['cells'] if c['skip'])
    print(summary(path.stem, rec['counts']) + f" in {rec['seconds']:.0f}s"
          + (f" (skipped {skipped})" if skipped else '')
          + (f" [prerequisite of {needed_by}, not in the total]" if needed_by else ''), flush=True)
    return out + [rec]


def env_prelude(rules: EnvRules, args) -> str:
    """Kernel-side setup for rules 6 and 7: the smaller splits of the diffusion notebooks and of prerequisites."""
    code = ''
    if rules.cut_sampling or rules.prerequisite:
        n = getattr(args, 'n_diffusion', 64)
        code += f"{HARNESS}.n_train, {HARNESS}.n_valid = min({HARNESS}.n_train, {n}), min({HARNESS}.n_valid, {n})\n"
    return code


# ---------------------------------------------------------------------------------------- what the kernel holds
PRELUDE = r'''
import importlib, os, sys, types
import miniai

class _CourseHarness:
    """Helpers the rewritten course cells call (see tools/run_course_notebooks.py)."""
    def __init__(self, n_train, n_valid, max_epochs):
        self.n_train, self.n_valid, self.max_epochs = n_train, n_valid, max_epochs
        self.device = importlib.import_module('miniai.device').def_device   # where `.cuda()` goes (rule 5)

    def take(self, module, names, ns):
        mod = importlib.import_module(module)
        public = getattr(mod, '__all__', None)
        missing = [n for n in names if not hasattr(mod, n)]
        ns.update({n: getattr(mod, n) for n in names if hasattr(mod, n)})
        listed = names if public is None else public
        unlisted = [n for n in names if hasattr(mod, n) and not n.startswith('_') and n not in listed]
        errs = [f"{module} has no {', '.join(missing)}"] if missing else []
        if unlisted: errs.append(f"{module}.__all__ leaves out {', '.join(unlisted)} (so `import *` does not give it)")
        if errs: raise ImportError('; '.join(errs))

    def _fashion(self, path):
        return isinstance(path, str) and path.rsplit('/', 1)[-1].lower().replace('-', '_') == 'fashion_mnist'

    def load_dataset(self, path, *args, **kwargs):
        if not self._fashion(path):
            import datasets
            return datasets.load_dataset(path, *args, **kwargs)
        from miniai.datasets import load_fashion_mnist
        dd = load_fashion_mnist()
        sizes = {'train': self.n_train}
        for k in dd: dd[k] = dd[k].select(range(min(len(dd[k]), sizes.get(k, self.n_valid))))
        return dd

    def load_dataset_builder(self, path, *args, **kwargs):
        if not self._fashion(path):
            import datasets
            return datasets.load_dataset_builder(path, *args, **kwargs)
        from miniai.datasets import load_fashion_mnist
        return types.SimpleNamespace(info=load_fashion_mnist()['train'].info)

    def epochs(self, n):
        return min(n, self.max_epochs) if isinstance(n, int) and not isinstance(n, bool) else n

    def few_timesteps(self, scheduler, n):
        """A diffusers scheduler set to sample in `n` steps (rule 7), spaced so that the first is still the last
        training step (999), which cells step from by number."""
        if hasattr(scheduler, 'register_to_config'): scheduler.register_to_config(timestep_spacing='trailing')
        scheduler.set_timesteps(n)
        return scheduler

'''


def write_kernelspec(folder: Path, python: list[str] | None = None) -> Path:
    """A kernelspec for `python` (default: this Python; tools/warm_python.py's `WarmPython.command()` forks kernels
    from a warm parent) with this process's environment (so PYTHONPATH picks the miniai)."""
    env = {k: v for k, v in os.environ.items() if k != 'MPLBACKEND'}   # an inherited Agg backend hides the plots
    spec = folder / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    python = python or [sys.executable, '-Xfrozen_modules=off']
    argv = [*python, '-m', 'ipykernel_launcher', '-f', '{connection_file}']
    (spec / 'kernel.json').write_text(json.dumps(
        {'argv': argv, 'display_name': 'course notebooks on miniai', 'language': 'python', 'env': env}))
    return folder


def plain(text: str) -> str:
    return re.sub(r'\x1b\[[0-9;]*[A-Za-z]', '', text)


def _kernel_client(nb, kernel_dir: Path, workdir: Path, timeout: int):
    """An nbclient for `nb` on our kernelspec, run in `workdir`, a timed-out cell interrupted (not fatal)."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient
    km = KernelManager(kernel_name=KERNEL_NAME, transport='ipc', ip=str(workdir / 'kernel'),
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)], ensure_native_kernel=False))
    return NotebookClient(nb, km=km, timeout=timeout, interrupt_on_timeout=True, allow_errors=True,
                          startup_timeout=120, resources={'metadata': {'path': str(workdir)}})


def _error(cell, timeout: int) -> tuple[str, str] | None:
    """(the error's line, the traceback's tail) when the executed `cell` raised, else None."""
    errs = [o for o in cell.outputs if o.output_type == 'error']
    if not errs: return None
    e = errs[0]
    msg = f"timed out after {timeout}s" if e.ename == 'KeyboardInterrupt' else f"{e.ename}: {e.evalue}".strip()
    return (msg.splitlines() or [''])[0][:400], plain('\n'.join(e.get('traceback', [])))[-3000:]


def run_notebook(path: Path, args, kernel_dir: Path, workdir: Path, env: EnvRules | None = None) -> dict:
    """Execute `path` cell by cell (errors allowed); returns its record: module, cells, counts, miniai path."""
    import nbformat
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    env = env or env_rules(path, args)
    module, cells = plan(nbformat.read(path, as_version=4), args.max_epochs, env)
    prelude = PRELUDE + (f"{HARNESS} = _CourseHarness({args.n_train}, {args.n_valid}, {args.max_epochs})\n"
                         + env_prelude(env, args) +
                         "print('miniai from', os.path.dirname(miniai.__file__), '| python', sys.executable)")
    run = [c for c in cells if c['skip'] is None]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in [prelude] + [c['code'] for c in run]])
    client = _kernel_client(nb, kernel_dir, workdir, args.timeout)
    rec, dead = {'notebook': path.name, 'module': module, 'miniai': None, 'cells': cells}, None
    try:
        with client.setup_kernel():
            for j, cell in enumerate(nb.cells):
                t0 = time.perf_counter()
                if not dead:
                    try: client.execute_cell(cell, j)
                    except CellTimeoutError: pass            # interrupted: its KeyboardInterrupt output says so
                    except DeadKernelError as e: dead = f"DeadKernelError: the kernel died ({e})"
                err = (dead, '') if dead else _error(cell, args.timeout)
                if j == 0:                                   # the prelude: which miniai, or nothing can run
                    if err: raise RuntimeError(f"the kernel could not start the run: {err[0]}\n{err[1]}")
                    rec['miniai'] = ''.join(o.get('text', '') for o in cell.outputs).strip() or None
                    continue
                c = run[j - 1]
                c.update(status='failed' if err else 'passed', seconds=round(time.perf_counter() - t0, 1))
                if err:
                    c['error'], c['traceback'] = err
                    print(f"  FAIL {path.stem} cell {c['cell']}: {c['error']}", flush=True)
    finally:                                # the kernel manager is ours, so nbclient leaves the kernel running
        if client.kc is not None: client.kc.stop_channels()
        if client.km.has_kernel: client.km.shutdown_kernel(now=True)
    for c in cells:
        if c['skip']: c['status'] = 'skipped'
    rec['counts'] = counts(cells)
    if args.save_executed:
        Path(args.save_executed).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, Path(args.save_executed) / path.name)
    return rec


def counts(cells) -> dict:
    n = {s: sum(c.get('status') == s for c in cells) for s in ('passed', 'failed', 'skipped')}
    return dict(run=n['passed'] + n['failed'], **n)


def summary(name: str, n: dict) -> str:
    return f"{name}: {n['run']} cells run, {n['passed']} passed, {n['failed']} failed" + (
        f", {n['skipped']} skipped" if n['skipped'] else '')


def find_notebook(course: Path, key: str) -> Path:
    """`course`'s notebook named `key` (`09`, `09_learner` or a file name), in the folder or its nbs/."""
    for folder in (course, course / 'nbs'):
        hits = sorted(folder.glob(f'{key}*.ipynb'))
        if hits: return hits[0]
    raise SystemExit(f"no notebook matching {key!r} in {course} or {course / 'nbs'}: "
                     "pass --course a checkout of fastai/course22p2 (or the folder of its notebooks)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n', 1)[1])
    p.add_argument('--course', type=Path, required=True, help="course22p2 checkout or folder of its notebooks")
    p.add_argument('--notebooks', nargs='+', default=DEFAULT_NOTEBOOKS,
                   help=f"notebook numbers or names (default: {' '.join(DEFAULT_NOTEBOOKS)})")
    p.add_argument('--n-train', type=int, default=512, help="training rows kept (default 512)")
    p.add_argument('--n-valid', type=int, default=256, help="rows kept in every other split (default 256)")
    p.add_argument('--max-epochs', type=int, default=1, help="cap on every fit's epochs (default 1)")
    p.add_argument('--n-samples', type=int, default=16,
                   help="cap on the images a diffusion notebook generates at once (default 16)")
    p.add_argument('--sample-steps', type=int, default=10,
                   help="cap on a sampler's literal steps=N and a DDPM notebook's n_steps=N (default 10)")
    p.add_argument('--n-diffusion', type=int, default=64,
                   help="rows kept in each split by the diffusion notebooks, 15 on (default 64)")
    p.add_argument('--timeout', type=int, default=600, help="seconds allowed per cell (default 600)")
    p.add_argument('--json', type=Path, help="write every cell's record here")
    p.add_argument('--save-executed', help="write the executed (rewritten) notebooks to this folder")
    p.add_argument('--show-rewrites', action='store_true', help="print each rewritten or skipped cell, run nothing")
    args = p.parse_args(argv)
    paths = [find_notebook(args.course, k) for k in args.notebooks]
    if args.show_rewrites:
        import nbformat
        for path in paths:
            for c in plan(nbformat.read(path, as_version=4), args.max_epochs, env_rules(path, args))[1]:
                if c['skip'] or c['code'] != c['source']:
                    print(f"--- {path.stem} cell {c['cell']}: " + (f"skipped: {c['skip']}" if c['skip'] else
                          f"\n{c['source']}\n--- becomes:\n{c['code']}"))
        return 0
    results, t0, ran = [], time.perf_counter(), {}
    with tempfile.TemporaryDirectory(prefix='course-nbs-') as d:
        kernel_dir = write_kernelspec(Path(d) / 'kernels')
        for path in paths:
            results += run_with_prerequisites(path, args, kernel_dir, Path(d), ran)
    total = counts([c for r in results if not r.get('prerequisite_for') for c in r['cells']])
    print(f"miniai: {results[0]['miniai'] if results else '?'}")
    print(summary('overall', total) + f" in {time.perf_counter() - t0:.0f}s")
    if args.json:
        args.json.write_text(json.dumps({'args': sys.argv[1:] if argv is None else list(argv), 'total': total,
                                             'notebooks': results}, indent=1, default=str))
    return 1 if total['failed'] else 0


if __name__ == '__main__':
    sys.exit(main())
