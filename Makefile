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

.PHONY: install demo test test-jax test-tensorflow test-torch docs bench clean

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

# Each backend in its own process (a backend cannot switch inside one);
# all run, and the target fails if any failed.
test: install
	@failed=""; \
	for backend in $(BACKENDS); do \
		echo "=== pytest, KERAS_BACKEND=$$backend"; \
		KERAS_BACKEND=$$backend $(PY) -m pytest tests -q -p no:cacheprovider $(ALL_TESTS) \
			|| failed="$$failed $$backend"; \
	done; \
	echo "=== mkdocs build --strict"; \
	$(PY) -m mkdocs build --strict -q -d $$(mktemp -d) || failed="$$failed docs"; \
	if [ -n "$$failed" ]; then echo "FAILED:$$failed"; exit 1; fi; \
	echo "all backends and the docs passed"

test-%: install
	KERAS_BACKEND=$* $(PY) -m pytest tests -q -p no:cacheprovider $(ALL_TESTS)

docs: install
	$(PY) -m mkdocs build --strict

bench: install
	$(PY) benchmarks/step_time.py

clean:
	rm -rf $(VENV) site outputs *.egg-info
