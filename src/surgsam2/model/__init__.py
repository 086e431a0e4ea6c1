"""The SAM 2 / 2.1 network, one module per part. No I/O, no memory policies."""
