"""python -m minisdit.evaluate: the entry point of ``minisdit.cli.evaluate`` (see its docstring)."""
import sys

from minisdit.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
