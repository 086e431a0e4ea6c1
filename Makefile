# Set-up and everyday commands. Both `demo` and `test` create .venv themselves if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
ONNX_VENV := .venv-onnx
ONNX_STAMP := $(ONNX_VENV)/.installed
DEMO_OUT ?= outputs/demo

.PHONY: install install-test install-onnx demo test test-fast clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch is pinned to the version this project is tested with; a GPU user who already has a
# CUDA build of torch>=2.5 in the environment keeps it (pyproject only asks for torch>=2.5).
$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e .
	touch $@

# The official sam2 package is the test oracle: installed without its torchvision dependency
# (not needed by the video predictor, and it would pull another torch) and without CUDA build.
$(TEST_STAMP): $(STAMP)
	$(PIP) install -q -e ".[serve,test]"
	SAM2_BUILD_CUDA=0 $(PIP) install -q --no-deps --no-build-isolation "sam2==1.1.0"
	touch $@

# A second venv without torch: the ONNX runtime's needs only, and this package without its
# dependencies (torch is one). tests/test_onnx_runtime.py runs the runtime in it.
$(ONNX_STAMP): pyproject.toml requirements-onnx.txt
	$(PYTHON) -m venv $(ONNX_VENV)
	$(ONNX_VENV)/bin/python -m pip install -q --upgrade pip
	$(ONNX_VENV)/bin/python -m pip install -q -r requirements-onnx.txt
	$(ONNX_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

install: $(STAMP)
install-test: $(TEST_STAMP) $(ONNX_STAMP)
install-onnx: $(ONNX_STAMP)

demo: $(STAMP)
	$(VENV)/bin/surgsam2 demo --out $(DEMO_OUT)

# Two workers (pytest-xdist), one torch thread each (tests/conftest.py); a test class, else a test
# file, is one work unit (its fixtures built once), and the units holding slow tests start first.
# TEST_WORKERS=0: one process, as a plain pytest run.
TEST_WORKERS ?= 2
test: $(TEST_STAMP) $(ONNX_STAMP)
	$(PY) -m pytest -q --durations=20 -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

clean:
	rm -rf $(VENV) $(ONNX_VENV) outputs .pytest_cache
