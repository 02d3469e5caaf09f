"""The structure study: README.md beside this file."""
