"""Benchmarks of the decoding path, the trie tables, minting and the service: each is
`python -m benchmarks.NAME --bundle DIR [--out FILE.json]`, prints a table and writes JSON."""
