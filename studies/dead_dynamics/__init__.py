"""The dead_dynamics study: README.md beside this file."""
