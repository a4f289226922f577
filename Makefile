# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test demo train-demo bench clean

setup: $(STAMP)

# Exact versions (the torch CPU wheel, the tested Ray) come from constraints.txt; pyproject holds
# ranges. torch goes first, so no later resolver step can pull a CUDA build.
PIP := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

$(VENV)/.base: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch
	$(PIP) -e '.[lm]'
	touch $@

# The test extra adds the parity references (transformers) and the S3 test server. pyctcdecode (what
# transformers' Wav2Vec2ProcessorWithLM decodes with: the beam decoder's reference) is installed without its
# declared dependencies: its wheel caps numpy below 2 and would downgrade the user's numpy; it runs on numpy 2.
$(STAMP): $(VENV)/.base
	$(PIP) -e '.[test,lm]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps pyctcdecode==0.5.0 pygtrie==2.5.0
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q tests

# The demo needs only the runtime install.
demo: $(VENV)/.base
	$(PY) jobs/demo.py

train-demo: $(STAMP)
	$(PIP) -e '.[test,train]'
	$(PY) -m training.train_demo

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) outputs
