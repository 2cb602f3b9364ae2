"""python -m minisdit.train: the entry point of ``minisdit.cli.train`` (see its docstring)."""
import sys

from minisdit.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
