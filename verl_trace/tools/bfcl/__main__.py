"""``python -m verl_trace.tools.bfcl``: print the verl tool YAML of all BFCL functions (the recipe's
``config/tool_config/bfcl_tool_config.yaml``)."""

import sys

import yaml

from .tool import tool_config

HEADER = """# Generated: python -m verl_trace.tools.bfcl > this file (a test checks it matches the installed bfcl-eval).
# One verl tool per BFCL function; each schema is built from BFCL's function doc at load time.
"""

if __name__ == "__main__":
    sys.stdout.write(HEADER + yaml.safe_dump(tool_config(), sort_keys=False))
