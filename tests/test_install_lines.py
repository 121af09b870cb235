"""Every `pip install` a user is told to run installs this project or a package it names.

The import name is `miniai`, but on the package index `miniai` is someone else's project: an instruction such as
`pip install 'miniai[tensorboard]'` would install that. So every install line in the README, docs/, the notebooks
and the strings of the package and tools (error messages, help texts, docstrings) must name the distribution that
pyproject.toml declares (with extras it defines), a path to this checkout (`-e .`, `'.[dev]'`), or a package
that pyproject.toml lists among its dependencies and extras.
"""
import ast
import re
import shlex
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:                      # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
DIST = PYPROJECT['name']
EXTRAS = set(PYPROJECT.get('optional-dependencies', {}))
# optional packages a message names without an extra of ours (AccelerateCB's Hugging Face Accelerate)
OPTIONAL = {'accelerate'}
_PIP = re.compile(r"pip install\s+((?:[-\w.\[\],='\"]+\s*)+)")


def listed_packages() -> set[str]:
    """The packages pyproject.toml depends on, in its dependencies or any extra."""
    reqs = PYPROJECT.get('dependencies', []) + [r for rs in PYPROJECT.get('optional-dependencies', {}).values()
                                                for r in rs]
    return {canonicalize_name(Requirement(r).name) for r in reqs}


def texts():
    """(where, text) for each text a user reads: markdown pages, notebook cells, strings in the code."""
    for md in [ROOT / 'README.md', *sorted((ROOT / 'docs').rglob('*.md'))]:
        yield md.relative_to(ROOT).as_posix(), md.read_text()
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        for i, cell in enumerate(nbformat.read(nb, as_version=4).cells):
            yield f'{nb.relative_to(ROOT).as_posix()} cell {i}', cell.source
    for py in sorted([*(ROOT / 'miniai').rglob('*.py'), *(ROOT / 'tools').glob('*.py')]):
        for node in ast.walk(ast.parse(py.read_text())):        # adjacent literals arrive joined, as printed
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                yield f'{py.relative_to(ROOT).as_posix()}:{node.lineno}', node.value


def requirements(line: str) -> list[str]:
    """The things `pip install ...` is asked to install (options and their values left out)."""
    try: words = shlex.split(line)
    except ValueError: words = line.replace("'", ' ').replace('"', ' ').split()
    out, skip = [], False
    for w in words:
        if skip: skip = False
        elif w in ('-c', '-r', '--constraint', '--requirement', '-i', '--index-url'): skip = True
        elif w.startswith('-') and w not in ('-e', '--editable'): continue
        elif w not in ('-e', '--editable'):
            w = w.rstrip(',;:)`')
            out.append(w[:-1] if w.endswith('.') and not w.startswith('.') else w)   # a sentence's full stop
    return [r for r in out if r]


def bad_requirement(req: str) -> str | None:
    """Why `req` does not install this project or a package it names (None when it does)."""
    if req.startswith('.'):                                       # this checkout, maybe with extras
        extras = set(re.findall(r'\[(.*)\]', req)[0].split(',')) if '[' in req else set()
        return f"extras {sorted(extras - EXTRAS)} are not in pyproject.toml" if extras - EXTRAS else None
    try: r = Requirement(req)
    except InvalidRequirement: return "not a requirement pip understands"
    name = canonicalize_name(r.name)
    if name == canonicalize_name(DIST):
        return f"extras {sorted(r.extras - EXTRAS)} are not in pyproject.toml" if r.extras - EXTRAS else None
    if name.startswith('miniai'): return f"names {r.name!r}, but this project is distributed as {DIST!r}"
    if name not in listed_packages() | OPTIONAL: return f"{r.name!r} is not a dependency in pyproject.toml"
    return None


def install_lines():
    return [(where, m[0], requirements(m[1])) for where, text in texts() for m in _PIP.finditer(text)]


def test_the_distribution_is_not_the_import_name_taken_on_the_index():
    assert canonicalize_name(DIST) != 'miniai' and (ROOT / 'miniai' / '__init__.py').is_file()


def test_every_install_line_installs_this_project_or_a_package_it_names():
    lines = install_lines()
    assert any(DIST in line for _, line, _ in lines), f"no install line names {DIST}"
    problems = [f"{where}: `{line.strip()}`: {req}: {why}" for where, line, reqs in lines for req in reqs
                if (why := bad_requirement(req))]
    assert not problems, '\n'.join(problems)
    assert all(reqs for _, _, reqs in lines), [line for _, line, reqs in lines if not reqs]


@pytest.mark.parametrize('line, why', [
    ("pip install 'miniai[tensorboard]'", 'distributed as'),
    ("pip install miniai", 'distributed as'),
    (f"pip install '{DIST}[nosuch]'", "extras ['nosuch']"),
    ("pip install -e '.[nosuch]'", "extras ['nosuch']"),
    ("pip install somethingelse", 'not a dependency'),
])
def test_a_line_that_would_install_something_else_is_caught(line, why):
    m = _PIP.search(line)
    reasons = [bad_requirement(r) for r in requirements(m[1])]
    assert any(r and why in r for r in reasons), reasons


@pytest.mark.parametrize('line', [f"pip install '{DIST}[tensorboard]'", "pip install -e .",
                                  "pip install -q -c constraints.txt -e '.[dev,docs]'", "pip install tensorboard"])
def test_lines_that_install_this_project_pass(line):
    assert [bad_requirement(r) for r in requirements(_PIP.search(line)[1])] == [None]
