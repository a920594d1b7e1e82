"""Tools that verl's agent loops call (loaded by class path from a tool config YAML) and their servers.

Optional: ``pip install 'verl-trace[search]'`` brings what they need (checked here, on import)."""

from ..extras import require_extra

require_extra("search", "verl_trace.tools (the retrieval server and the search tool)")
