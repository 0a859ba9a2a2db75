"""The demo's builders: tiny randomly initialised models, their tokenizer and bundled instruction data.

For the demo, the tests and the benchmarks on machines without network access. Not training code: nothing in
`worker.training` imports this package.
"""
