import os
import sys

# `python -m toolkit` puts the current folder first on sys.path; a file there named like a
# dependency (numpy.py, torch.py) must never be imported in its place. `dcl --model` finds the
# user's own module explicitly (toolkit/factory.py).
sys.path[:] = [p for p in sys.path if p not in ("", ".", os.getcwd())]

from toolkit.cli import main  # noqa: E402 - after the path is cleaned

sys.exit(main())
