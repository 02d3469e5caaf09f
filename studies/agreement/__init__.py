"""The agreement study: README.md beside this file."""
