"""Imported first by the search tool and the retrieval server: their optional packages (the
``search`` extra) are checked before anything imports them, so a missing one names its pip line."""

from ..extras import require_extra

require_extra("search", "the search tool and the retrieval server (verl_trace.tools)")
