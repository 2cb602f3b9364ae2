"""The command-line tools: ``python -m minisdit.train``, ``.sample``, ``.evaluate`` and ``.data``
(thin entry modules in the package root call ``main`` here).  Nothing in the library imports them."""
