"""Generic file operations over a transport, as the user: path policy (paths), command
lines (commands), output parsing (parse), byte channels (channels), request bodies (body),
one user's file space (service) and the ``files`` settings (settings). See docs/files.md."""
