#!/usr/bin/env bash
# The test command of the README: every test, the slow ones included, then every tutorial notebook.
# (A bare `pytest` leaves the slow tests out, pyproject.toml addopts; here they cost about 35 s on two cores.)
set -euo pipefail
cd "$(dirname "$0")/.."
# the model's matrices are small: one BLAS thread is faster than two fighting for two cores
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
python -m pytest -q -m "slow or not slow" "$@"
if compgen -G "tutorials/*.ipynb" > /dev/null; then
    MINISDIT_TUTORIAL_QUICK=1 python -m pytest -q --nbmake --nbmake-timeout=600 tutorials/
fi
