"""`python -m runtime_harness.devices.arm64`: make the arm64 environment (the set-up runs this)."""
import sys

from dcl_core.errors import DclError
from runtime_harness.devices.arm64 import build

try:
    print(build(log=lambda m: print(f"[arm64] {m}", file=sys.stderr)).root)
except DclError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
