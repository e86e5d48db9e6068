"""Local stand-ins for the catalog API and the shops: real HTTP servers for tests, benchmarks and the demo."""
