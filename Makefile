# The two commands README starts with. Both create or reuse .venv through scripts/setup.sh.
.PHONY: setup demo test test-fast bench

setup:
	@bash scripts/setup.sh

# The main job on embedded defaults (small; a few minutes on 2 cores): a quick DC-CCL run, its
# export for `host` in every format (each artifact verified against PyTorch), a profile of every
# artifact beside PyTorch eager, and the report (runs/demo-bundle/profile-host/report.html); then
# the same bundle as aarch64 code under qemu: parity and instruction counts (profile-arm64/).
demo: setup
	.venv/bin/dcl train dcccl --quick --out runs/demo --force
	.venv/bin/dcl export runs/demo --target host --out runs/demo-bundle --force
	.venv/bin/dcl profile runs/demo-bundle --device host --runs 50 --duration 0.5 --force
	.venv/bin/dcl profile runs/demo-bundle --device arm64 --force

# Every test, on two worker processes (pytest-xdist; each test file stays on one worker, so a
# file's module fixtures are built once). What CI runs.
test: setup
	.venv/bin/python -m pytest -q -n 2 --dist loadfile tests

# A subset a developer runs between changes (under 3 minutes on 2 cores), touching every package:
# dcl_core (outputs, config, manifests), exporters (descriptors, TFLite ops, targets), the harness
# (parsers, metrics, report, adb against a fake), the toolkit (architecture contracts, data,
# models, progress). `make test` runs them too.
FAST_TESTS = tests/test_outputs.py tests/test_config.py tests/test_format_descriptors.py tests/test_targets.py \
	tests/test_tflite_ops.py tests/test_harness_parsers.py tests/test_harness_metrics.py tests/test_harness_report.py \
	tests/test_harness_adb.py tests/test_architecture.py tests/test_data.py tests/test_models.py \
	tests/test_progress_lines.py tests/test_imports.py
test-fast: setup
	.venv/bin/python -m pytest -q -n 2 --dist loadfile $(FAST_TESTS)

bench: setup
	.venv/bin/python bench/run_all.py
