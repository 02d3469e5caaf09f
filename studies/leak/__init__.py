"""The leak study: README.md beside this file."""
