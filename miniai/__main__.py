"""`python -m miniai train ...`: the same as the `miniai` console script."""
import sys

from .cli import main

__all__ = []

if __name__ == '__main__': sys.exit(main())
