# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dynrefer-installed

# Never reach a model hub: weights are always local paths.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test lint docs browser bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[train,eval,serve,demo,proposals,search,nlp,dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dynrefer demo --out demo_output

# the linter and the documentation site (strict: a broken reference fails) first: seconds, before the suite
test: lint docs browser
	$(PY) -m pytest -q

# the web page's test drives Debian's chromium (Playwright's own browser download cannot be fetched here)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "make test: the browser test needs Debian's chromium package: sudo apt-get install -y chromium" >&2; \
	    exit 1; fi; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

bench: $(STAMP)
	$(PY) scripts/bench_views.py

clean:
	rm -rf demo_output .pytest_cache build dist site *.egg-info
