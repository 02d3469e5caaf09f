"""The replication study: README.md beside this file."""
