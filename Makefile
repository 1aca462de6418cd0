# Quick start (README): `make run` starts the daemon, `make test` runs the whole suite.
# Both install what is missing first (.ci/setup.sh); a second run installs nothing.
.PHONY: run test lint bench bench-smoke setup
STATE_DIR ?= ./hive-state
PORT ?= 7000

setup:
	@.ci/setup.sh

run:
	@.ci/setup.sh --no-browser
	.venv/bin/hive-c0re serve --state-dir $(STATE_DIR) --runtime process --dashboard-host 127.0.0.1 --dashboard-port $(PORT)

# the suite runs on one pytest-xdist worker per core, at most 4 (tests/worker.py keeps them apart);
# `make test WORKERS=0` runs it in this one process
WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

# the suite writes bytecode even where PYTHONDONTWRITEBYTECODE is set (this machine's shells, CI):
# without the cache every xdist worker re-parses and assert-rewrites every test module at
# collection (30 s instead of 8 s per worker at load 12)
test:
	@.ci/setup.sh
	env -u PYTHONDONTWRITEBYTECODE timeout 2700 .venv/bin/python -m pytest -q -n $(WORKERS) --dist loadgroup --durations=15

lint:
	@.ci/setup.sh --no-browser
	.venv/bin/ruff check hivecore actors web tests bench
	.venv/bin/mypy hivecore actors web tests

BENCHES = event_bus rescan host_sock cli verbs broker sse meta confine proposal_fetch mcp_tools metrics swarm swarm_ops

# every bench bounds its own waits; the timeout is the last resort
bench:
	@.ci/setup.sh --no-browser
	@for b in $(BENCHES); do echo "== bench/$$b.py"; timeout 1800 .venv/bin/python bench/$$b.py || exit 1; done

# tiny sizes: every bench still runs to the end (CI runs this after the tests)
bench-smoke:
	@.ci/setup.sh --no-browser
	@for b in $(BENCHES); do echo "== bench/$$b.py --smoke"; timeout 120 .venv/bin/python bench/$$b.py --smoke || exit 1; done
