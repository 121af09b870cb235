"""`python -m miniai.launch ...`: torchrun (same arguments) that exits like a single process on Ctrl-C.

torchrun answers Ctrl-C, SIGTERM or SIGHUP by passing the signal on to its workers (each `miniai train` saves
`interrupted.pt` and exits 130, 143 or 129) and then exits 1 with a `SignalException` traceback of its own. This runs
torchrun's `main` and turns that into exit code 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM, 129 for
SIGHUP), with no traceback, as a one-process run does:

    python -m miniai.launch --nproc_per_node 2 -m miniai train --epochs 5
Described in docs/reliability.md.
"""
from __future__ import annotations

import sys

__all__ = ['main']


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with `argv` (default: the command line); return its exit code, 128+N when stopped by signal N."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun
    try: torchrun(sys.argv[1:] if argv is None else argv)
    except SignalException as e:
        print(f"miniai.launch: stopped by signal {int(e.sigval)}", file=sys.stderr)
        return 128 + int(e.sigval)
    return 0


if __name__ == '__main__':
    sys.exit(main())
