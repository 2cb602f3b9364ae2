"""python -m minisdit.ablate: the entry point of ``minisdit.cli.ablate`` (see its docstring)."""
import sys

from minisdit.cli.ablate import main

if __name__ == "__main__":
    sys.exit(main())
