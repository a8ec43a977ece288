"""A hash-chained, append-only trail of every model exchange, kept by the server and by every site.

Not the membership-inference audit (consortium.privacy.audit): this package records what crossed the wire.
  digest.py    SHA-256 over a canonical encoding of a task payload, identical at sender and receiver
  chain.py     the JSON-lines chain: append (locked, fsync'd), read, verify
  recorder.py  the FLARE component (in each participant's own local/privacy.json) that writes the records
  summary.py   a job's exchanges per site, from the server's trail, for the run record and the report
  install.py   the component's entry in a participant's local/privacy.json
"""
