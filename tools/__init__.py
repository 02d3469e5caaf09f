"""The everyday tools a practitioner types: one experiment (`exp`), the comparison table
(`compare`), the MLflow UI (`ui`), the store after a move (`relocate`), a run's MLflow upload after
an outage (`sync`). Each is a `make` target (`make exp`, `make compare`, `make ui`, `make relocate`,
`make sync`) over `python -m tools.<name>`.

A client of the pipeline like study/ (whose DVC calls and sweep helpers it uses); it imports no
study of studies/, and nothing in spikelab or stages imports it.
"""
