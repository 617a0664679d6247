"""The five stages of a run, each reading what the one before stored in the run database.

``load`` → ``plan`` → ``send`` → ``track`` → ``results``; the orchestrator is
:mod:`bulkbatch.pipeline`. They live in their own package so that the front-door functions
``bulkbatch.plan``, ``bulkbatch.send`` and ``bulkbatch.results`` are never shadowed by
modules of the same name.
"""
