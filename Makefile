# The README's two commands:
#   make run    install into a venv and serve the API on :8088 (mock backend)
#   make test   install everything (Debian packages too, as root) and run the whole suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PLUGINS := plugins/mock plugins/slurm_ssm plugins/aip
PYTEST_ARGS ?=

.PHONY: run test install install-test system-deps bench clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

install: $(VENV)/bin/activate
	$(PIP) install -q -e . $(foreach p,$(PLUGINS),$(if $(wildcard $(p)/setup.cfg),-e $(p)))

install-test: $(VENV)/bin/activate
	$(PIP) install -q -e '.[test]' $(foreach p,$(PLUGINS),$(if $(wildcard $(p)/setup.cfg),-e $(p)))

system-deps:
	bash scripts/install-system-deps.sh

# Loopback only unless told (make run GATEWAY_BIND=0.0.0.0); GATEWAY_CONFIG names a config.
GATEWAY_BIND ?= 127.0.0.1
run: install
	GATEWAY_BIND=$(GATEWAY_BIND) $(VENV)/bin/gunicorn -c deploy/gunicorn.conf.py 'gateway:create_app()'

test: system-deps install-test
	$(PY) -m pytest $(PYTEST_ARGS)

bench: system-deps install-test
	$(PIP) install -q -e '.[test,bench]'
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info test-artifacts
