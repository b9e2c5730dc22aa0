# hubsched: `make run` starts the whole stack on embedded defaults; `make test` runs the tests.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PORT ?= 8000

.PHONY: run test install install-dev migrate demo clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(VENV)/bin/activate
	$(PIP) install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt requirements.txt $(VENV)/.installed
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

migrate: install
	$(PY) manage.py migrate --noinput

demo: migrate
	$(PY) manage.py load_demo

## The main job: reference hubs, worker, beat and web server on 127.0.0.1:$(PORT); Ctrl-C stops all.
run: demo
	$(PY) manage.py runstack --port $(PORT)

## Installs what the tests need and runs them (real PostgreSQL, MariaDB, Redis, RabbitMQ where present).
test: install-dev
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf var
