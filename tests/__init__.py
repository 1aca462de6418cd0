"""hivecore's test suite.

Rules (DEVELOPERS.md):

* real parts, not mocks: real git, nix, sqlite, processes, Unix sockets and HTTP through hypercorn;
  the only stubs are ``nixos-container``/``systemctl``/``machinectl`` (they cannot run here);
* time is trio's ``MockClock(autojump_threshold=0)`` (the ``autojump_clock`` fixture) for pollers,
  backoff and heartbeats; no test sleeps waiting for a poller;
* every process a test starts is killed by a fixture (agents are detached on purpose);
* tests assert what a user would see; speed is measured in ``bench/``, never asserted here.
"""
