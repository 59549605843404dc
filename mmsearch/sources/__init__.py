"""Where items come from: files on disk, and whether a file is still what was indexed."""
