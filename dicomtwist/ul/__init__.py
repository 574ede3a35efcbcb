"""Upper Layer (PS3.8): PDUs, framing, the state machine and the Twisted protocol."""
