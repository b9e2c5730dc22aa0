# hubsched: `make run` starts the whole stack on embedded defaults; `make test` runs the tests.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PORT ?= 8000

.PHONY: run test install install-dev migrate demo clean vendor

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

## The console's front-end packages, pinned, from the npm registry into static/vendor/ (committed: nothing is loaded
## from a CDN or npm at run time); static/vendor/VERSIONS.txt records each file's package, version and sha256.
## The script editor (console/static_src/editor.js) is bundled by esbuild with the CodeMirror packages its
## package-lock.json pins (every version, transitive ones too: `npm ci`).
HTMX_VERSION := 2.0.11
ALPINE_VERSION := 3.17.5
UPLOT_VERSION := 1.6.32
vendor:
	rm -rf var/vendor && mkdir -p var/vendor static/vendor
	cd var/vendor && npm pack --silent htmx.org@$(HTMX_VERSION) alpinejs@$(ALPINE_VERSION) uplot@$(UPLOT_VERSION) >/dev/null
	tar -xzf var/vendor/htmx.org-$(HTMX_VERSION).tgz -O package/dist/htmx.min.js > static/vendor/htmx.min.js
	tar -xzf var/vendor/alpinejs-$(ALPINE_VERSION).tgz -O package/dist/cdn.min.js > static/vendor/alpine.min.js
	tar -xzf var/vendor/uplot-$(UPLOT_VERSION).tgz -O package/dist/uPlot.iife.min.js > static/vendor/uplot.min.js
	tar -xzf var/vendor/uplot-$(UPLOT_VERSION).tgz -O package/dist/uPlot.min.css > static/vendor/uplot.min.css
	cp console/static_src/package.json console/static_src/package-lock.json var/vendor/
	cd var/vendor && npm ci --silent --no-audit --no-fund
	cp console/static_src/editor.js var/vendor/entry.js
	var/vendor/node_modules/.bin/esbuild var/vendor/entry.js --bundle --minify --format=iife --log-level=warning \
		--outfile=static/vendor/codemirror.min.js
	printf '%s\n' "# made by make vendor: file, npm package@version, sha256" \
		"htmx.min.js htmx.org@$(HTMX_VERSION) $$(sha256sum static/vendor/htmx.min.js | cut -d' ' -f1)" \
		"alpine.min.js alpinejs@$(ALPINE_VERSION) $$(sha256sum static/vendor/alpine.min.js | cut -d' ' -f1)" \
		"uplot.min.js uplot@$(UPLOT_VERSION) $$(sha256sum static/vendor/uplot.min.js | cut -d' ' -f1)" \
		"uplot.min.css uplot@$(UPLOT_VERSION) $$(sha256sum static/vendor/uplot.min.css | cut -d' ' -f1)" \
		"codemirror.min.js console/static_src/editor.js bundled by esbuild with $$(cd var/vendor && node -e 'const l = require("./package-lock.json").packages; console.log(Object.keys(l).filter(k => k).map(k => k.replace(/^node_modules\//, "") + "@" + l[k].version).join(" "))') $$(sha256sum static/vendor/codemirror.min.js | cut -d' ' -f1)" \
		> static/vendor/VERSIONS.txt
	rm -rf var/vendor

clean:
	rm -rf var
