"""`miniai train --resume DIR`: the run goes on as the same run.

- Its flags are its own, read from DIR/config.json (`resume_args`). Only `RESUME_FLAGS` may be given with --resume:
  `--epochs` (a larger number extends the run), `--device`, `--data` (the run's data, moved) and `--dist-timeout`;
  any other flag given with a value other than the run's would change what the run computes and is refused, naming
  it (the run's own command line with --resume added is accepted).
- Its data are its own: config.json records where they were read from (an absolute path) and what identifies them
  (`data_identity`: the number of images and the SHA-256 of each split); a resume whose data differ is refused
  (`check_same_data`).
- A run whose epochs are all trained but whose final files were not all written (interrupted, or a full disk, while
  writing them) gets them written (`final_files_done` tells the two apart); one that is complete is refused, with the
  flag that extends it (`check_resume`). So is one that early stopping ended (`check_not_stopped_early`): another
  epoch without improvement would only stop it again.
Described in docs/reliability.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

from ..errors import UsageError
from .parser import RESUME_FLAGS, SEED_RANGE, build_parser, flag_name

__all__ = ['resume_args', 'data_identity', 'check_same_data', 'final_files_done', 'check_resume',
           'check_not_stopped_early', 'resume_note', 'RUN_FACTS']

_SAVED = {'epochs': int, 'lr': float, 'bs': int, 'seed': int}   # config.json keys a resume cannot do without
# config.json keys that describe the run rather than its flags
RUN_FACTS = ('world_size', 'data_identity', 'final_files_from')


def _valid(k: str, v) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float) if _SAVED[k] is float else int): return False
    if k == 'seed': return SEED_RANGE[0] <= v <= SEED_RANGE[1]
    return 0 < v < math.inf


def _read_config(run: Path) -> dict:
    cfg = run / 'config.json'
    try: saved = json.loads(cfg.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"--resume {run}: {cfg} is not valid JSON ({e}); restore it, or start a new run") from None
    if not isinstance(saved, dict): raise UsageError(f"--resume {run}: {cfg} must hold an object of the run's flags")
    missing = [k for k in _SAVED if k not in saved]
    wrong = [k for k in _SAVED if k in saved and not _valid(k, saved[k])]
    if missing or wrong:
        raise UsageError(f"--resume {run}: {cfg} " + (f"lacks the key(s) {', '.join(missing)}" if missing else
                         f"has invalid value(s) for {', '.join(f'{k}={saved[k]!r}' for k in wrong)}") +
                         "; it must hold the flags of the run that wrote it: restore it, or start a new run")
    return saved


def _same(k: str, given, own, run: Path) -> bool:
    if k == 'out': return given is not None and Path(given).resolve() == run.resolve()
    return given == own or (isinstance(given, Path) and own is not None and str(given) == str(own))


def _refuse_changes(run: Path, given: set[str], args, saved: dict, defaults: dict):
    """Refuse the flags in `given` that --resume does not take and whose value is not the run's own (the same
    command line with --resume added is accepted), showing the run's values of them."""
    bad = sorted(k for k in given - set(RESUME_FLAGS)
                 if not _same(k, getattr(args, k, None), saved.get(k, defaults.get(k)), run))
    if not bad: return
    own = ', '.join(f"{flag_name(k)} {saved.get(k, defaults.get(k))}" for k in bad
                    if saved.get(k, defaults.get(k)) not in (None, False))
    allowed = ', '.join(flag_name(k) for k in RESUME_FLAGS if k != 'resume')
    raise UsageError(f"--resume {run}: {', '.join(flag_name(k) for k in bad)} would change the run, which goes on "
                     f"with its own flags from {run / 'config.json'}" + (f" ({own})" if own else '') +
                     f"; with --resume give only {allowed} (or the run's own values). To train with other flags, "
                     "start a new run")


def resume_args(args, given: set[str] | None = None) -> tuple[argparse.Namespace, dict]:
    """The flags of the run in `args.resume`, so that the resumed run is the same run, and the run's facts from its
    config.json (`RUN_FACTS`, its `epochs` and `data` as saved).

    `given`: the flags named on the command line (`given_flags`); None (a Namespace made in code) counts those whose
    value differs from the default. Flags added to miniai since the run was saved take their defaults.
    """
    run = args.resume
    if not (run / 'config.json').is_file():
        raise UsageError(f"--resume {run}: expected a run folder of `miniai train` holding config.json and last.pt "
                         "(written after each epoch)")
    saved = _read_config(run)
    defaults = vars(build_parser().parse_args(['train']))
    if given is None: given = {k for k, v in vars(args).items() if k in defaults and v != defaults[k]}
    _refuse_changes(run, given, args, saved, defaults)
    facts = {k: saved.pop(k) for k in RUN_FACTS if k in saved}
    for k in ('data', 'out'): saved[k] = Path(saved[k]) if saved.get(k) else None
    facts.update(epochs=saved['epochs'], data=saved['data'])
    new = {**defaults, **saved, 'resume': run, 'out': run,
           'epochs': getattr(args, 'epochs', None) or saved['epochs'],
           'device': getattr(args, 'device', None) or saved.get('device')}
    if 'data' in given: new['data'] = args.data
    return argparse.Namespace(**new), facts


def data_identity(dls) -> dict | None:
    """What identifies the data a run trains on: per split, the number of images and the SHA-256 of the images and
    labels as loaded (the same data read from another folder, or from the hub, are the same). None for loaders that
    do not hold their data as tensors."""
    ident = {}
    for split, dl in (('train', dls.train), ('valid', dls.valid)):
        ts = getattr(getattr(dl, 'dataset', None), 'tensors', None)
        if not ts: return None
        h = hashlib.sha256()
        for t in ts: h.update(t.detach().cpu().contiguous().numpy())
        ident[split] = {'images': len(ts[0]), 'sha256': h.hexdigest()}
    return ident


def check_same_data(run: Path, facts: dict, ident: dict | None, source):
    """Refuse to resume the run in `run` on data (`ident`, read from `source`) other than those it trained on."""
    want = facts.get('data_identity')
    if not want or not ident: return                     # a run saved before miniai recorded its data
    names = {'train': 'training set', 'valid': 'validation set (the test images)'}
    diff = [s for s in names if want.get(s) != ident.get(s)]
    if not diff: return
    s = diff[0]
    was, now = want.get(s) or {}, ident[s]
    trained_on = facts.get('data') or 'the Hugging Face hub'
    raise UsageError(f"--resume {run}: the data in {source or 'the Hugging Face hub'} are not the run's: its "
                     f"{names[s]} had {was.get('images', '?'):,} images (SHA-256 {str(was.get('sha256'))[:12]}...), "
                     f"these have {now['images']:,} (SHA-256 {now['sha256'][:12]}...). Pass --data with the files "
                     f"the run trained on (from {trained_on})")


def final_files_done(out: Path, facts: dict) -> bool:
    """Whether the run's final files (the plots, model.pt) were written from the checkpoint now in `out`/last.pt.

    config.json names the last.pt (by its SHA-256) they were made from; a run saved before miniai recorded it counts
    as done when it has a model.pt."""
    from ..files import sha256_file
    if not (out / 'model.pt').is_file(): return False
    made_from = facts.get('final_files_from')
    if made_from is None: return 'data_identity' not in facts
    return made_from == sha256_file(out / 'last.pt')


def check_resume(done: int, args, saved_epochs: int):
    """Refuse a resume with nothing left to train (`done` epochs of `args.epochs`), naming the flag that extends it."""
    if done < args.epochs: return
    more = f"--epochs {done + saved_epochs}" if saved_epochs else "--epochs N"
    raise UsageError(f"the run in {args.out} has already trained {done} epochs (of {saved_epochs}); to train it "
                     f"longer pass a larger total, e.g. `miniai train --resume {args.out} {more}`")


def check_not_stopped_early(out: Path, stopper, done: int):
    """Refuse to resume a run that its early stopping (`stopper`, an `EarlyStoppingCB` with its state loaded, or
    None) ended after `done` epochs: it is complete, and one more epoch without improvement would stop it again."""
    if stopper is None or not stopper.patience_spent: return
    n = f"{stopper.wait} epoch{'s' if stopper.wait != 1 else ''}"
    best = (f"its best {stopper.key} was {stopper.best:.4g} at epoch {stopper.best_epoch}"
            if stopper.best is not None else f"its {stopper.key} was never finite")
    epochs = f"{done} epoch{'s' if done != 1 else ''}"
    raise UsageError(f"early stopping ended the run in {out} after {epochs}: its {stopper.key} had not improved "
                     f"for {n} (--early-stop {stopper.patience}; {best}), so it is complete and best.pt holds its "
                     "best epoch. To train longer, start a new run with a larger --early-stop patience, or without "
                     "it")


def resume_note(done: int, args, saved_epochs: int) -> str:
    note = f"resuming {args.out} at epoch {done} of {args.epochs}"
    if args.epochs <= saved_epochs: return note
    # OneCycleSchedCB keeps its step count and recomputes the total from the fit's n_epochs: the schedule of an
    # `epochs`-long run, picked up at the step reached (the lr goes back up to that schedule's value)
    return (f"{note} (extended from {saved_epochs}: the one-cycle schedule is rebuilt for {args.epochs} epochs and "
            "goes on from the step reached, so the lr rises to that schedule's value)")
