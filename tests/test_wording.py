"""No in-house words where users read: the package, README, notebooks, docs/, tools/, benchmarks/ and the tests.

The documents the tutorials follow are named by title and author ("Scheduler" by galopy), not by a number
("seed 001", `test_seed001_...`) or as "the seed"; the course's CNN is "the course's CNN"; nothing says what was or
was not lent, taken or targeted; a test says what it checks, not which issue asked for it ("issue 13").
A random seed (`--seed 42`, `set_seed(1)`, "seed 42") is a different word and stays.
"""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Each phrase, with what to write instead (the message says it).
BANNED = {
    r"(?<![-\w])seeds?[ _]?0\d\d\b": 'name the document by title and author ("Accelerated SGD", fast.ai course)',
    r"(?<=_)seed_?0\d\d(?=_|\b)": 'name the document by title and author in test and helper names too',
    r"(?<![-\w=(])seeds? \d\b(?! *[,)=])": 'name the document by title and author, not "seed N"',
    r"(?<![-\w])seeds'": '"the course\'s CNN", "the tutorials\' documents", ... (the seeds are not a user\'s word)',
    r"\bthe seeds\b(?!=)": 'name the documents (the course, the tutorials) instead of "the seeds"',
    r"\bthe seed's\b": 'name the document instead of "the seed\'s"',
    r"\bseed'?s?[- ](?:recipe|model)\b": '"the default recipe" / "the course\'s CNN"',
    r"\bH100 targets?\b": "say what was measured, not targets",
    r"\b(?:was|were|been|be|is|are|not) lent\b": "nothing about what was (not) available to the project",
    r"\blent to this work\b": "nothing about what was (not) available to the project",
    r"\bissues? #?\d+\b": "say what is checked or fixed, not which issue asked for it",
}
_RE = {re.compile(p, re.I): why for p, why in BANNED.items()}


def findings(text: str) -> list[tuple[str, str]]:
    """(matched phrase, what to write instead) for every banned phrase in `text`."""
    return [(m[0], why) for rx, why in _RE.items() for m in rx.finditer(text)]


def notebook_text(path: Path) -> str:
    """A notebook's cell sources (markdown and code) and the text of its outputs."""
    nb, parts = json.loads(path.read_text()), []
    for cell in nb['cells']:
        parts.append(''.join(cell.get('source', '')))
        for out in cell.get('outputs', []):
            parts.append(''.join(out.get('text', '')))
            for mime in ('text/markdown', 'text/plain', 'text/html'):
                parts.append(''.join(out.get('data', {}).get(mime, '')))
    return '\n'.join(parts)


def user_facing_files() -> list[Path]:
    files = [ROOT / 'README.md', ROOT / 'Makefile', ROOT / 'mkdocs.yml', ROOT / 'pyproject.toml']
    files += sorted((ROOT / 'miniai').rglob('*.py')) + sorted((ROOT / 'nbs').glob('*.ipynb'))
    files += sorted((ROOT / 'nbs').glob('*.yml')) + sorted((ROOT / 'docs').rglob('*.md'))
    files += sorted((ROOT / 'tools').rglob('*.py'))
    bench = ROOT / 'benchmarks'
    files += [p for p in sorted(bench.rglob('*')) if p.suffix in ('.py', '.md', '.sh')
              and 'results' not in p.relative_to(bench).parts]         # raw logs are kept as they were printed
    files += [p for p in sorted((ROOT / 'tests').rglob('*.py')) if p.name != Path(__file__).name]  # (ours: examples)
    return [f for f in files if f.is_file() and f.name != '_modidx.py']


@pytest.mark.parametrize('text', [
    'as in seed 001', 'Seed 000, the course notebook', "seed 002's `sgd_cb`", 'seeds 000 and 001 use',
    "the seeds' model", 'trains the seed recipe', 'a seed-recipe fit', "the seeds' recipe",
    'so the H100 targets are unmeasured',
    'no GPU was lent to this work', 'no GPU has been lent to this work', "after the seed's 3 epochs",
    'the seeds use', 'def seed000(dsd):', 'def test_seed001_scheduler():', 'def test_onecycle_seed001_signature',
    '# --- issue 13: run folders', '(issue 12, the callbacks part)', 'Issue 13: a symlink'])
def test_banned_phrases_are_caught(text):
    assert findings(text), f"{text!r} should be caught"


@pytest.mark.parametrize('text', [
    'python train.py --seed 42', 'set_seed(1)', 'seed 42', 'with `--seed 1` and `--seed 2`', 'three seeds, 0.93',
    'the random seed', 'seed=0', 'a seeded generator', 'set_seed(seed, deterministic)', 'the seed, 42, is saved',
    'Generator().manual_seed(0)', 'seeds=(0, 1, 2)', "ap.add_argument('--seeds', type=int, nargs='+')"])
def test_random_seeds_are_not_caught(text):
    assert not findings(text), f"{text!r} is a random seed, not an in-house word: {findings(text)}"


def scan_user_facing_files(check) -> list[str]:
    """`check(line)`'s (phrase, why) findings on every line of the files users read, as 'file:line: ...' lines."""
    problems = []
    for path in user_facing_files():
        text = notebook_text(path) if path.suffix == '.ipynb' else path.read_text(errors='replace')
        for i, line in enumerate(text.splitlines(), 1):
            for phrase, why in check(line):
                where = path.relative_to(ROOT).as_posix() + ('' if path.suffix == '.ipynb' else f':{i}')
                problems.append(f"{where}: {phrase!r}: {why}")
    return problems


def test_no_in_house_words_where_users_read():
    problems = scan_user_facing_files(findings)
    assert not problems, f"{len(problems)} in-house phrases:\n" + '\n'.join(problems)


# "The seed" for the document a tutorial follows: the tutorials say "the course notebook", "the post", "the
# code-along", "the notes". A random seed is "the random seed", `set_seed(42)`, `--seed 1`, "the same seed".
_NAME_IT = 'name the document ("the course notebook", "the post", "the code-along", "the notes")'
DOCUMENT_SEED = {
    r"\bthe seed\b(?!,? ?-?\d| as an? )": _NAME_IT + '; a random seed is "the random seed"',
    r"(?<![-\w])(?<!each )(?<!every )seed's\b": _NAME_IT + ", not \"the seed's\"",
    r"\bseed[- ](?:class|classes|accuracy|accuracies|time|times|lr|document|notebook|post|notes|table)\b":
        'name the document in labels too: "course class", "post accuracy", "post time", "the course\'s class, here"',
    r"\bseed_(?:opt|acc|class|secs|time)\b": 'name the document in variables too: course_opt, course_acc',
    r"(?<![\w.'\"])seed = \{": 'name the document in variables too: post = {...}',
    r"(?:^|\|)[ \t]*seed[ \t]*(?=\|)|<th>\s*seed\s*</th>": 'a column of the document\'s numbers is named after it '
        '(`course`, `post accuracy`); a column of random seeds is "random seed"',
    r"md_table\(\[[^\]]*['\"]seed['\"]": 'a column of the document\'s numbers is named after it (`course`)',
}
_DOC_RE = {re.compile(p, re.I): why for p, why in DOCUMENT_SEED.items()}


def document_seed_findings(text: str) -> list[tuple[str, str]]:
    """(matched phrase, what to write instead) for every use of "seed" meaning the document a tutorial follows."""
    return [(m[0], why) for rx, why in _DOC_RE.items() for m in rx.finditer(text)]


@pytest.mark.parametrize('text', [
    'Each optimizer is first written exactly as the seed writes it,', 'The seed draws a live loss',
    '**What is different from the seed.** The seed uses fastai', 'Everything else follows the seed: its `SimpleNet`',
    'dls = DataLoaders.from_dd(tds, bs, in_memory=True)   # the seed: DataLoaders.from_dd(tds, bs, num_workers=4)',
    "res['SGD', 'seed class'] = final_acc()", '| SGD (seed class) | 0.851 | 0.856 | +0.5 |', 'Seed lr `1e-3`:',
    "md_table(['optimizer', 'lr', 'seed', \"seed's class, here\", 'miniai.sgd, here'],",
    "| optimizer | lr | seed | seed's class, here | miniai.sgd, here |", '| run | seed | ours | difference (points) |',
    "seed_opt = {'SGD': (0.4, 0.851)}", 'for k, s in seed_acc.items():', "seed = {'cosine, from scratch': (0.877, 75),",
    "md_table(['run', 'seed accuracy', 'seed time', 'our accuracy'], rows)", '<th>seed</th>',
    'plt.plot(seeds, lw=4, alpha=.4, label="seed\'s OneCycle")', 'the symptom the seed\'s notes describe',
    'the six entries the seed lists:', 'the seed document', 'a seed notebook'])
def test_the_document_called_seed_is_caught(text):
    assert document_seed_findings(text), f"{text!r} should be caught"


@pytest.mark.parametrize('text', [
    'python train.py --seed 42', 'set_seed(42)', 'torch.manual_seed(1)', 'seed 42', 'the random seed', 'seed=0',
    'With the same seed and the same batches the run matches', 'with the same recipe, seed and number of epochs as',
    'a fresh, identically seeded `SimpleNet`', 'seeded the same way each time', 'the seed, 42, is saved',
    'it stores the seed as a 64-bit integer', 'seeds 0, 1, 2 of both recipes', '(seed 0)', 'three random seeds',
    '| random seed | train s per epoch |', "assert [r['seed'] for r in runs] == [3, 4]", '{"epochs": 2, "seed": 1}',
    'lacks the key(s) lr, bs, seed', '| `seed` | the random seed |', 'rank:int=0, seed:int=0', '`seed + epoch`',
    "each seed's accuracy", 'def seed_worker(worker_id):', 'SEED_RANGE = (-2**63, 2**64 - 1)'])
def test_random_seeds_are_not_taken_for_the_document(text):
    assert not document_seed_findings(text), f"{text!r} is a random seed: {document_seed_findings(text)}"


def test_tutorials_name_the_document_they_follow_not_the_seed():
    problems = scan_user_facing_files(document_seed_findings)
    assert not problems, f"{len(problems)} uses of 'seed' for a tutorial's document:\n" + '\n'.join(problems)
