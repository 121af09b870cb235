"""`miniai train --help`: each default said once, two or more examples, and the files a run writes."""
import re

from miniai.cli import build_parser


def train_help() -> str:
    sub = next(a for a in build_parser()._actions if a.dest == 'command')
    return sub.choices['train'].format_help()


def test_each_default_is_said_at_most_once():
    text = train_help()
    options = re.split(r'\n  (?=--)', text.split('options:', 1)[1].split('examples:', 1)[0])
    twice = [o.split()[0] for o in options if o.count('(default') > 1]
    assert not twice, f"'(default: ...)' twice for {twice}:\n{text}"
    assert '(default: None)' not in text and '(default: False)' not in text, text
    assert '(default: 5)' in text and '(default: 1024)' in text, "the numeric defaults are still shown"


def test_help_shows_examples_and_output_files():
    text = train_help()
    examples = text.split('examples:', 1)[1].split('\n\n', 1)[0]
    assert len([ln for ln in examples.splitlines() if 'miniai train' in ln]) >= 2, text
    for name in ('metrics.csv', 'config.json', 'last.pt', 'best.pt'):
        assert re.search(rf'^\s+{re.escape(name)}\s', text, re.M), f"{name} missing from --help:\n{text}"


def test_help_states_the_resume_rule_and_the_signals():
    text = ' '.join(train_help().split())           # argparse wraps lines anywhere
    resume = text.split('options:', 1)[1].split('--resume DIR', 1)[1].split('--dist-timeout SECONDS', 1)[0]
    for words in ('--epochs', '--device', '--data', '--dist-timeout', 'is refused'):
        assert words in resume, f"--resume's help lacks {words!r}: {resume}"
    assert 'SIGTERM or SIGHUP' in text and '143' in text and '129' in text, text
    assert re.search(r'run\.lock who trains in the folder', text), text


def test_help_answers_without_importing_torch():
    """`miniai --help`, `miniai train --help` and an unknown flag are answered before torch is imported (seconds
    of start-up): the command line loads the training code only to run it."""
    import subprocess
    import sys
    code = ("import sys\nfrom miniai.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['train', '--nope']):\n"
            "    try: main(argv)\n    except SystemExit as e: print('exit', e.code)\n"
            "print('torch', 'torch' in sys.modules)\n")
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    got = [line for line in res.stdout.splitlines() if line.startswith(('exit ', 'torch '))]
    assert got == ['exit 0', 'exit 0', 'exit 2', 'torch False'], res.stdout[-500:] + res.stderr[-2000:]
    assert 'unrecognized arguments: --nope' in res.stderr
