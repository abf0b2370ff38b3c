# The two commands README starts with. Both create or reuse .venv through scripts/setup.sh.
.PHONY: setup demo test bench

setup:
	@bash scripts/setup.sh

# The main job on embedded defaults (small; a few minutes on 2 cores).
demo: setup
	.venv/bin/dcl train dcccl --quick --out runs/demo

test: setup
	.venv/bin/python -m pytest -q tests

bench: setup
	.venv/bin/python bench/run_all.py
