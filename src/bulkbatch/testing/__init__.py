"""Test helpers that ship with bulkbatch: a deliberately misbehaving Courier
(:mod:`bulkbatch.testing.misbehaving`) for proving the client ends every hostile case in
bounded time with one clear error."""

from bulkbatch.testing.misbehaving import MODES, MisbehavingServer, misbehaving_app, serve

__all__ = ["MODES", "MisbehavingServer", "misbehaving_app", "serve"]
