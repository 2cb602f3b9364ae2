"""python -m minisdit.data fetch NAME: the entry point of ``minisdit.cli.data``."""
import sys

from minisdit.cli.data import main

sys.exit(main())
