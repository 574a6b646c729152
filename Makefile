# `make demo` and `make test` each set up .venv when needed, then do their job.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
OUT    ?= zoo-out
# pytest processes for make test (pytest-xdist; 0 runs in this process). A file's tests share one process and its fixtures.
TEST_JOBS ?= 2

.PHONY: demo test test-kernels parity bench lint clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# zoo-onnx was named zoo before: drop that distribution and the metadata it left in this folder
	@rm -rf zoo.egg-info; $(PY) -m pip uninstall --quiet --yes zoo 2>/dev/null || true
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $@

demo: $(STAMP)  ## build, train, export and verify the whole zoo into $(OUT)/ (replacing an earlier demo there)
	$(VENV)/bin/zoo run -o $(OUT) --force

test: $(STAMP)  ## the test suite (what CI runs), then the tests that depend on torch's float32 kernels on its baseline ones
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 $(PY) -m pytest -q -m parity -n $(TEST_JOBS)

test-kernels: $(STAMP)  ## the tests that depend on torch's float32 kernels, under every kernel set this CPU has (ATen's, oneDNN's)
	for isa in default avx2 avx512; do ATEN_CPU_CAPABILITY=$$isa $(PY) -m pytest -q -m parity || exit 1; done
	for isa in SSE41 AVX2; do ONEDNN_MAX_CPU_ISA=$$isa $(PY) -m pytest -q -m parity || exit 1; done

parity: $(STAMP)  ## the parity matrix: every activation x layer x exporter x opset x dtype (ARGS=--quick: two opsets each)
	$(PY) -m export.parity.matrix $(ARGS)

bench: $(STAMP)  ## every benchmark figure quoted in the README, as ratios measured in one run
	$(PY) -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(OUT) build *.egg-info .pytest_cache
