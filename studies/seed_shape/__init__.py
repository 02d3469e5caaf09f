"""The seed_shape study: README.md beside this file."""
