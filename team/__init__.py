"""Team mode: the lab on shared, well-kept infrastructure instead of one laptop.

stack (a whole team stack on one machine, on loopback: PostgreSQL, the MLflow server with
authentication and proxied artifacts, a bare git remote, a DVC remote, a Ray head and workers)
-> study (a sweep file's runs as Ray tasks: each one a normal DVC experiment in its own clone,
pushed to the remotes, logged to the shared server; then collected into the usual report).
Like study/, a client of the pipeline: nothing in spikelab or stages imports it.
"""
