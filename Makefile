# The two commands README starts with. Both create or reuse .venv through scripts/setup.sh.
.PHONY: setup demo test bench

setup:
	@bash scripts/setup.sh

# The main job on embedded defaults (small; a few minutes on 2 cores): a quick DC-CCL run, its
# export for `host` in every format (each artifact verified against PyTorch), a profile of every
# artifact beside PyTorch eager, and the report (runs/demo-bundle/profile-host/report.html).
demo: setup
	.venv/bin/dcl train dcccl --quick --out runs/demo --force
	.venv/bin/dcl export runs/demo --target host --out runs/demo-bundle --force
	.venv/bin/dcl profile runs/demo-bundle --device host --runs 50 --duration 0.5 --force

test: setup
	.venv/bin/python -m pytest -q tests

bench: setup
	.venv/bin/python bench/run_all.py
