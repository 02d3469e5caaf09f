"""The evidence study: README.md beside this file."""
