# Fresh machine: `make demo` (install + build the tiny engines + text- and image-to-video MP4s), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch; on a GPU machine install your own torch first, then `make install`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-out
# pytest-xdist workers for `make test`: whole files per worker (module fixtures build once), in tests/conftest.py's order
TEST_WORKERS ?= 2

.PHONY: install demo test clean bench cpp

$(STAMP): pyproject.toml requirements/oracle.txt requirements/tensorrt-rtx.txt requirements/triton.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e '.[export,test,cpu,serve]'  # [cuda] instead of [cpu] on a GPU machine: onnxruntime-gpu
	$(PIP) install -q --no-deps -r requirements/triton.txt && $(PY) -m wan_rt.serve --prepare-env || echo "Triton not installed: its tests will skip"
	$(PIP) install -q --no-deps -r requirements/oracle.txt
	$(PIP) install -q -r requirements/tensorrt-rtx.txt || echo "TensorRT-RTX wheels not installed: its tests will skip"
	touch $@

install: $(STAMP)

demo: install
	$(PY) -m wan_export.cli build --profile tiny --out $(DEMO_OUT)/engines
	$(PY) -m wan_rt.demo_image $(DEMO_OUT)/input.png
	$(PY) -m wan_rt.cli generate --engines $(DEMO_OUT)/engines --seed 1 \
		--prompt "A red fox trots through fresh snow at sunrise" --out $(DEMO_OUT)/t2v.mp4
	$(PY) -m wan_rt.cli generate --engines $(DEMO_OUT)/engines --seed 2 --image $(DEMO_OUT)/input.png \
		--prompt "The scene comes alive, the camera slowly pushes in" --out $(DEMO_OUT)/i2v.mp4
	@echo "demo videos: $(DEMO_OUT)/t2v.mp4 $(DEMO_OUT)/i2v.mp4 (tiny random weights: moving noise, not a real video)"

test: install
	bash scripts/setup_cpp.sh || echo "C++ build dependencies not installed: tests/test_cpp.py will say what to run"
	$(PY) -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

cpp:
	bash scripts/setup_cpp.sh
	cmake -S runtime/cpp -B runtime/cpp/build -DCMAKE_BUILD_TYPE=Release
	cmake --build runtime/cpp/build -j2

bench: install
	$(PY) benchmarks/bench_host_loop.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache runtime/cpp/build
