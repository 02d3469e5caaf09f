"""The sweep study: README.md beside this file."""
