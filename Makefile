# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
BACKENDS := jax tensorflow torch
# One thread per process: the suite runs on small shared machines.
export OMP_NUM_THREADS ?= 1
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1
export NO_MKDOCS_2_WARNING ?= 1

.PHONY: install demo test test-jax test-tensorflow test-torch docs docs-check bench clean

$(VENV)/.installed: pyproject.toml constraints-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints-test.txt -e ".[all,examples,test,docs,sos]" 2>&1 \
		| grep -v "is ignored: it is neither" || true
	$(PY) -c "import keras_bernstein, jax, tensorflow, torch, mlxtend, mkdocs"
	touch $@

install: $(VENV)/.installed

demo: install
	KERAS_BACKEND=$${KERAS_BACKEND:-jax} $(PY) examples/mnist.py --data sample

# pyproject.toml leaves the slow tests out of a plain `pytest`; make runs all.
ALL_TESTS := -m "slow or not slow"

# Each backend in its own process (a backend cannot switch inside one), up to
# TEST_JOBS side by side; each one's output is printed whole when it ends, and
# the target fails if any backend or the docs build failed.
TEST_JOBS ?= 2

test: install
	@$(MAKE) --no-print-directory -k -O -j$(TEST_JOBS) $(addprefix test-,$(BACKENDS)) docs-check \
		&& echo "all backends and the docs passed" \
		|| { echo "FAILED: the targets marked Error above"; exit 1; }

$(addprefix test-,$(BACKENDS)): test-%: install
	@echo "=== pytest, KERAS_BACKEND=$*"
	@# A temporary folder of its own: pytest's shared one is pruned by the others.
	temporary=$$(mktemp -d -t keras-bernstein-$*-XXXXXX); \
	KERAS_BACKEND=$* $(PY) -m pytest tests -q -p no:cacheprovider --basetemp=$$temporary \
		$(ALL_TESTS); status=$$?; rm -rf $$temporary; exit $$status

docs-check: install
	@echo "=== mkdocs build --strict"
	$(PY) -m mkdocs build --strict -q -d $$(mktemp -d)

docs: install
	$(PY) -m mkdocs build --strict

bench: install
	$(PY) benchmarks/step_time.py

clean:
	rm -rf $(VENV) site outputs *.egg-info
