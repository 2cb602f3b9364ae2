#!/usr/bin/env bash
# The test command of the README: unit and property tests, then every tutorial notebook.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q "$@"
if compgen -G "tutorials/*.ipynb" > /dev/null; then
    MINISDIT_TUTORIAL_QUICK=1 python -m pytest -q --nbmake --nbmake-timeout=600 tutorials/
fi
