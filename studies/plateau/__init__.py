"""The plateau study: README.md beside this file."""
