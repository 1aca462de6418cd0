# Quick start (README): `make run` starts the daemon, `make test` runs the whole suite.
# Both install what is missing first (.ci/setup.sh); a second run installs nothing.
.PHONY: run test lint bench setup
STATE_DIR ?= ./hive-state
PORT ?= 7000

setup:
	@.ci/setup.sh

run:
	@.ci/setup.sh --no-browser
	.venv/bin/hive-c0re serve --state-dir $(STATE_DIR) --runtime process --dashboard-host 127.0.0.1 --dashboard-port $(PORT)

test:
	@.ci/setup.sh
	timeout 1200 .venv/bin/python -m pytest -q

lint:
	@.ci/setup.sh --no-browser
	.venv/bin/ruff check hivecore actors web tests bench
	.venv/bin/mypy hivecore actors web

bench:
	@.ci/setup.sh --no-browser
	.venv/bin/python bench/event_bus.py
	.venv/bin/python bench/rescan.py
	.venv/bin/python bench/host_sock.py
	.venv/bin/python bench/cli.py
	.venv/bin/python bench/verbs.py
	.venv/bin/python bench/broker.py
	.venv/bin/python bench/sse.py
	.venv/bin/python bench/meta.py
	.venv/bin/python bench/confine.py
	.venv/bin/python bench/proposal_fetch.py
