"""The doctor study: README.md beside this file."""
