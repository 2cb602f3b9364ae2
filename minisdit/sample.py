"""python -m minisdit.sample: the entry point of ``minisdit.cli.sample`` (see its docstring)."""
import sys

from minisdit.cli.sample import main

if __name__ == "__main__":
    sys.exit(main())
