"""hivecore's test suite.

Rules (DEVELOPERS.md):

* real parts, not mocks: real git, nix, sqlite, processes, Unix sockets and HTTP through hypercorn;
  the only stubs are ``nixos-container``/``systemctl``/``machinectl`` (they cannot run here);
* virtual time (trio's ``MockClock(autojump_threshold=0)``, the ``autojump_clock`` fixture) only
  where no thread or process runs: pollers, backoff and heartbeats driven on fakes, asserted exactly;
  tests with real processes or threads run on the real clock and wait with the one
  :func:`tests.waiting.eventually` (a bounded real-time deadline); HTTP goes through
  :mod:`tests.web_client` (httpx);
* every process a test starts is killed by a fixture (agents are detached on purpose);
* tests assert what a user would see; speed is measured in ``bench/``, never asserted here.
"""
