"""ganserve's performance benchmark: `python -m bench [--quick] [--json out.json]` (see bench/__main__.py)."""
