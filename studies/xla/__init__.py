"""The xla study: README.md beside this file."""
