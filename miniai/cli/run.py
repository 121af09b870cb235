"""One `miniai train` run, `train(args)`: pick and hold the run folder (or the one to resume), load the data, build
the recipe's learner, fit, and write the final files; a signal on the way saves what there is
(`miniai.cli.signals`). Described in docs/reliability.md.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from ..errors import UsageError
from .errors import WriteError, write_error
from .outputs import FINAL_FILES, final_message, finish, mark_final_files, rewrite_csv, write_config, write_plots
from .parser import DIST_TIMEOUT
from .recipe import build_learner
from .resume import (
    check_not_stopped_early,
    check_resume,
    check_same_data,
    data_identity,
    final_files_done,
    resume_args,
    resume_note,
)
from .run_dir import hold_run, out_dir, remove_if_unused
from .signals import StopSignals, say, stop_on_signals

__all__ = ['train']


def _data_source(path):
    """The folder the data are read from (absolute), or None for the Hugging Face hub."""
    from ..datasets import data_source
    return data_source(path)


def _banner(args, source, dls, model, device, world: int) -> str:
    """What the run trains on: device(s), data source and size, model size."""
    n_train, n_valid = (len(getattr(dl, 'dataset', ())) for dl in (dls.train, dls.valid))
    procs = f" x {world} processes" if world > 1 else ''
    return (f"miniai train: {device}{procs}; Fashion-MNIST from {source or 'the Hugging Face hub'}: {n_train:,} "
            f"training and {n_valid:,} validation images (its test split); model: "
            f"{sum(p.numel() for p in model.parameters()):,} "
            f"parameters; {args.epochs} epoch{'s' if args.epochs != 1 else ''}, bs {args.bs}, lr {args.lr:g}")


@contextmanager
def _torch_flags_kept():
    """Put torch's process-wide determinism flags back as they were after the run (`--deterministic` sets them)."""
    import torch
    algos, bench = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    try: yield
    finally:
        # only when changed: the call imports torch's compiler, seconds of a short run's start
        if torch.are_deterministic_algorithms_enabled() != algos: torch.use_deterministic_algorithms(algos)
        torch.backends.cudnn.benchmark = bench


def train(args, given: set[str] | None = None) -> Path:
    """Run the recipe with parsed `args` (or resume the run in `args.resume`); returns the output folder.

    `given`: the flags named on the command line (`miniai.cli.parser.given_flags`), which --resume checks; SIGINT,
    SIGTERM and SIGHUP stop the run as Ctrl-C does (`miniai.cli.signals`), raising a KeyboardInterrupt.
    """
    with warnings.catch_warnings(), stop_on_signals() as stops, _torch_flags_kept():
        warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')  # raised by torcheval's import
        return _train(args, given, stops)


def _train(args, given, stops: StopSignals) -> Path:
    import torch

    from ..device import def_device
    from ..distributed import init_from_env, is_main_process

    facts = None
    if args.resume: args, facts = resume_args(args, given)
    else: args.epochs = args.epochs or 5
    world = int(os.environ.get('WORLD_SIZE', 1))  # set by torchrun
    if args.bs % world: raise UsageError(f"--bs {args.bs} (global) must be a multiple of the {world} processes")
    from ..device import check_device
    check_device(args.device)
    timeout = timedelta(seconds=getattr(args, 'dist_timeout', DIST_TIMEOUT))
    device = init_from_env(args.device, timeout=timeout) if world > 1 else torch.device(args.device or def_device)
    if args.resume: out, created, lock = args.out, False, hold_run(args.out)
    else: out, created, lock = out_dir(args)
    try:
        if args.resume and not (out / 'last.pt').is_file():
            raise UsageError(f"--resume {out}: expected a run folder of `miniai train` holding config.json and "
                             "last.pt (written after each epoch)")
        return _run(args, out, device, world, facts, stops)
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt) and not getattr(e, 'reported', False) and is_main_process():
            stops.stop(e)
            say(f"interrupted{stops.by()} before training began: " +
                (f"{out} is as it was" if args.resume else "nothing was kept"))
        if not args.resume and is_main_process(): remove_if_unused(out, created, lock)
        raise
    finally:
        if lock is not None: lock.release()


def _save_interrupted(learn, out: Path, stops: StopSignals, e: BaseException):
    """interrupted.pt after a stop by a signal, and what the user can do with it."""
    from ..checkpoint import SaveModelCB, save_checkpoint
    from ..distributed import is_main_process
    saver = next(cb for cb in learn.cbs if isinstance(cb, SaveModelCB))
    done = saver.epoch_done == learn.epoch
    resumable = (out / 'last.pt').is_file()
    how = (f"`miniai train --resume {out}` continues from the last complete epoch" if resumable else
           f"no epoch was complete, so there is nothing to resume: start a new run (delete {out} first to "
           "reuse its name)")
    try: save_checkpoint(learn, out / 'interrupted.pt', epoch_done=done, wait=False)   # no collective after a stop
    except KeyboardInterrupt as again:
        if is_main_process():
            say(f"interrupted{stops.by()} again while saving {out / 'interrupted.pt'}: it was not written, and "
                f"nothing else was touched; {how}")
        again.reported = True
        raise
    e.reported = True
    if not is_main_process(): return
    part = '' if done else (f" (inside epoch {learn.epoch}: loading it trains epoch {learn.epoch} again from "
                            "its start)")
    say(f"interrupted{stops.by()}: state saved to {out / 'interrupted.pt'}{part}; {how}{stops.held_note()}")


def _write_final_files(learn, valid_dl, out: Path, device, n_batches: int,
                       stops: StopSignals) -> str:
    """training.png, confusion.png and model.pt, then config.json's note that they are complete; a stop or a failed
    write on the way says what is kept (every epoch, in last.pt) and that --resume writes the rest."""
    kept = (f"training is complete and kept in {out / 'last.pt'} (the best epoch in best.pt); "
            f"`miniai train --resume {out}` writes {', '.join(FINAL_FILES)} without training again")
    try:
        metrics = write_plots(learn, out, n_batches)
        finish(learn, valid_dl, out, device)
        mark_final_files(out)
    except KeyboardInterrupt as e:
        stops.stop(e)
        say(f"interrupted{stops.by()} while writing the final files: {kept}{stops.held_note()}")
        e.reported = True
        raise
    except OSError as e:
        err = e if isinstance(e, WriteError) else write_error(e, e.filename) if e.filename else None
        if err is None: raise
        raise WriteError(err.errno, f"{err}; {kept} once that is fixed", err.filename) from e
    return final_message(metrics, out)


def _run(args, out: Path, device, world: int, facts: dict | None, stops: StopSignals) -> Path:
    from ..callbacks import MetricsCB, set_seed
    from ..checkpoint import CheckpointError, load_checkpoint
    from ..datasets import get_dls
    from ..distributed import distributed_dls, is_main_process
    from ..sgd import OneCycleSchedCB
    from ..stopping import EarlyStoppingCB

    main = is_main_process()
    set_seed(args.seed, deterministic=args.deterministic)
    try: source = _data_source(args.data)
    except FileNotFoundError as e:
        if not args.resume: raise
        raise UsageError(f"--resume {out}: {e}; if the run's data moved, pass --data with the folder that holds them "
                         "now (they are checked to be the same)") from None
    full_dls = dls = get_dls(args.bs // world, path=args.data, device=device, limit=args.limit)
    ident = data_identity(full_dls)
    if args.resume: check_same_data(out, facts, ident, source)
    moved = bool(args.resume and facts['data'] and Path(facts['data']) != source)
    args.data = source
    if world > 1: dls = distributed_dls(dls, seed=args.seed)
    new_facts = {'data_identity': ident, **({'final_files_from': facts['final_files_from']}
                                            if facts and 'final_files_from' in facts else {})}
    if not args.resume and main: write_config(args, out, device, world, new_facts)
    learn = build_learner(args, dls, out, device)
    metrics = next(cb for cb in learn.cbs if isinstance(cb, MetricsCB))
    if args.resume:
        try: ckpt = load_checkpoint(learn, out / 'last.pt')
        except CheckpointError as e:
            if not (out / 'best.pt').is_file(): raise
            raise CheckpointError(f"{e}. To go on from the best epoch instead (if best.pt is intact), copy best.pt "
                                  f"and best.pt.sha256 over last.pt and last.pt.sha256 in {out}, then --resume "
                                  "again") from e
        done = learn.resume_epoch
        stopper = next((cb for cb in learn.cbs if isinstance(cb, EarlyStoppingCB)), None)
        complete = done >= args.epochs or (stopper is not None and stopper.patience_spent)
        if complete and not final_files_done(out, facts):
            return _only_final_files(learn, ckpt, full_dls.valid, out, device, len(dls.train), stops, main)
        check_not_stopped_early(out, stopper, done)
        check_resume(done, args, facts['epochs'])
        if main: rewrite_csv(out / 'metrics.csv', metrics.history)  # drops rows written after last.pt
    if main:
        print(_banner(args, source, full_dls, learn.model, device, world))
        if args.resume: print(resume_note(learn.resume_epoch, args, facts['epochs']))
        if args.resume and moved: print(f"reading the run's data from {source} (the same images as before)")
        if args.resume and (args.epochs != facts['epochs'] or moved):
            write_config(args, out, device, world, new_facts)
    # what fit_one_cycle adds, held here so that interrupted.pt (saved after the fit ends) has its position too
    with learn.added_cbs(OneCycleSchedCB(args.lr)):
        try: learn.fit(args.epochs)
        except KeyboardInterrupt as e:
            stops.stop(e)
            _save_interrupted(learn, out, stops, e)
            raise
    if not main: return out
    print(_write_final_files(learn, full_dls.valid, out, device, len(dls.train), stops))
    return out


def _only_final_files(learn, ckpt: dict, valid_dl, out: Path, device, n_batches: int, stops: StopSignals,
                      main: bool) -> Path:
    """A resume of a run whose epochs are all trained (or that early stopping ended) but whose final files are not
    all written: write them."""
    if not main: return out
    say(f"{out} has finished training but its final files were not all written (it was stopped, or a write "
        "failed, while writing them): writing them now")
    # the loaded checkpoint gave every callback its state (losses, lrs, rows): the plots need no fit
    print(_write_final_files(learn, valid_dl, out, device, n_batches, stops))
    return out
