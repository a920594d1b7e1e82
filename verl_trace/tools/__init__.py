"""Tools that verl's agent loops call (loaded by class path from a tool config YAML) and their servers."""
