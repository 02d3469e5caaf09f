"""The plateau_structure study: README.md beside this file."""
