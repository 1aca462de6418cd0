"""The verb table: one row per verb, every surface generated from it.

:mod:`hivecore.verbs.spec` is the light half (names, principals, help, how each surface shows the
verb; stdlib only, so ``hivectl`` can import it); :mod:`hivecore.verbs.bind` is the server half
(the request record, its checks, the façade call, the answers). See ``docs/architecture.md``.
"""
