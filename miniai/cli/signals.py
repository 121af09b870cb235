"""How a signal stops `miniai train`: SIGINT (Ctrl-C), SIGTERM (what SLURM, Kubernetes, `kill` and `timeout` send)
and SIGHUP (the terminal was closed) all stop the run the same way, by raising `Stopped` (a KeyboardInterrupt) where
the run stands, so that it saves `interrupted.pt`, says what it kept and exits with 128 + the signal's number
(130, 143, 129).

Once the run is stopping, a second signal is held until the save in progress is done (a second Ctrl-C a fraction of a
second after the first, or torchrun passing on the signal the workers already got, must not cut the save short); a
third stops at once. Every file is written atomically, so even then the files on disk are whole: the last complete
epoch's `last.pt` is kept. The handlers are installed for one `train` call and the previous ones put back after it.
Described in docs/reliability.md.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

__all__ = ['Stopped', 'StopSignals', 'stop_on_signals', 'exit_code', 'say']

_SIGNALS = tuple(getattr(signal, n) for n in ('SIGINT', 'SIGTERM', 'SIGHUP') if hasattr(signal, n))


class Stopped(KeyboardInterrupt):
    """The run was stopped by signal `signum`; `forced`: by a third signal, while it was saving what it had."""
    def __init__(self, signum: int, forced: bool = False):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.forced = int(signum), forced


def exit_code(e: BaseException) -> int:
    """The conventional exit code of a process stopped by the signal behind `e`: 128 + its number (Ctrl-C: 130)."""
    return 128 + getattr(e, 'signum', signal.SIGINT)


class StopSignals:
    """The state of a run's stop: `first` is the signal that stopped it (None while it runs), `held` the signals
    that came after it."""
    def __init__(self): self.first, self.held = None, []

    def handle(self, signum, frame):
        if self.first is None:
            self.first = signum
            raise Stopped(signum)
        self.held.append(signum)
        if len(self.held) >= 2: raise Stopped(self.first, forced=True)

    def stop(self, e: BaseException):
        """Note that the run is stopping because of `e`, also when it was raised without a signal (a KeyboardInterrupt
        from code), so that signals from now on are held."""
        if self.first is None: self.first = getattr(e, 'signum', signal.SIGINT)

    def by(self) -> str:
        """' by SIGTERM' for a stop by any signal but Ctrl-C's, for messages; '' for Ctrl-C."""
        return '' if self.first in (None, signal.SIGINT) else f" by {signal.Signals(self.first).name}"

    def held_note(self) -> str:
        """What the messages add when more signals came while the run was saving."""
        if not self.held: return ''
        names = ', '.join(signal.Signals(s).name for s in self.held)
        return f" ({names} received meanwhile: held until this save was done)"


@contextmanager
def stop_on_signals():
    """Within the block, SIGINT, SIGTERM and SIGHUP raise `Stopped` (see the module's docstring); yields the
    `StopSignals`. Outside the main thread (where Python cannot install handlers) the handlers stay as they are."""
    stops, old = StopSignals(), {}
    if threading.current_thread() is threading.main_thread():
        for s in _SIGNALS: old[s] = signal.signal(s, stops.handle)
    try: yield stops
    finally:
        for s, h in old.items(): signal.signal(s, signal.SIG_DFL if h is None else h)


def say(msg: str):
    """Print `msg` to stderr; after SIGHUP the terminal may be gone, which must not stop the run from ending well."""
    try: print(msg, file=sys.stderr, flush=True)
    except (OSError, ValueError): pass
