"""Process plumbing the stages share: errors, files, integrity checks, imports, native logs, lifetime, timing."""
