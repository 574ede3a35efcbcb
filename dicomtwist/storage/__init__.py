"""The archive on disk: instance files and the sqlite index that C-FIND,
C-MOVE and C-GET search (``index``, with PS3.4 C.2.2.2 rules in ``matching``).
"""
