"""`python -m exporters.executorch.native`: build the runner into the cache (the set-up runs this)."""
import sys

from dcl_core.errors import ExportError
from exporters.executorch.native import build

try:
    print(build(log=lambda m: print(m, file=sys.stderr)))
except ExportError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
