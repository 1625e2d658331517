"""Sans-IO protocol state machines: bytes and events in, bytes and events out; no
sockets, clocks or threads inside (the caller passes the time)."""
