"""Facts: what provision reads on a host, as POSIX sh snippets with pure parsers of
their output, and the typed records they give (paths, GPUs, host load, GGUF layout).
"""
