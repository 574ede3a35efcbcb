"""DIMSE (PS3.7): messages, command-set codec, fragmentation and dispatch."""
