# quaygate: `make run` and `make test` do every install step on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: run serve install test test-deps browser interop-deps lint bench openapi clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test,bench]' 2>&1 | grep -v 'is ignored' || true
	$(PY) -m pip install -q --no-deps face_recognition==1.3.0 2>&1 | grep -v 'is ignored' || true
	@$(PY) -c 'import quaygate, fastapi, authlib, joserfc, webauthn, dlib, face_recognition' || (echo "install failed" >&2; exit 1)
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m quaygate.cli migrate
	$(PY) -m quaygate.cli demo
	$(PY) -m quaygate.cli serve --host 127.0.0.1 --port 8000

serve: install
	$(PY) -m quaygate.cli serve

# The browser tests drive Debian's Chromium (never `playwright install`: it cannot download here).
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the browser tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	else echo "chromium is missing: run 'sudo apt-get install -y chromium' (the browser tests skip without it)"; fi

# The certified relying party (openid-client, pinned in tests/interop/package-lock.json) and the
# certified OpenID provider the brokered login is tested against (oidc-provider, tests/upstream/).
interop-deps:
	@if [ -d tests/interop/node_modules/openid-client ]; then :; \
	elif command -v npm >/dev/null; then npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error; \
	else echo "npm is missing: install Node.js 20 and npm (the interop tests skip without them, and fail under CI)"; fi
	@if [ -d tests/upstream/node_modules/oidc-provider ]; then :; \
	elif command -v npm >/dev/null; then npm ci --prefix tests/upstream --no-audit --no-fund --loglevel=error; \
	else echo "npm is missing: the brokered-login tests skip without it (and fail under CI)"; fi

test-deps: install browser interop-deps

test: install test-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n 2 --dist loadgroup -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: install
	$(PY) loadtests/bench.py

openapi: install
	$(PY) -m quaygate.openapi_export

clean:
	rm -rf var/ .pytest_cache
