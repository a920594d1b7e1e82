"""Tools that verl's agent loops call (loaded by class path from a tool config YAML) and their servers.

Each family checks its own optional packages on import (``verl_trace.extras``): the search tool and
the retrieval server the ``search`` extra, the Python tool the ``math`` extra; the BFCL tools need
``bfcl-eval`` installed without its dependencies (``verl_trace.tools.bfcl.package``).
"""
