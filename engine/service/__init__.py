"""The service layer: server, protocol, journal, snapshots, configuration, CLI.

It sits on top of the engine core and settlement, never inside them: the core
(``engine.core``, ``engine.book``, ``engine.messages``) and ``settlement`` never
import from here.  This package imports nothing on purpose, so importing one
service module does not pull in the others.
"""
