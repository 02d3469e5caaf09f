"""The scaling study: README.md beside this file."""
