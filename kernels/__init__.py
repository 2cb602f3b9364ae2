"""CUDA C sources of minisdit's RawKernels (installed as package data ``minisdit.kernels``)."""
