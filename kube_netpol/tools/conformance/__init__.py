"""The conformance harness: scenario files run `offline` against the engine or in a `dataplane` lab.

Layers, each importing only the ones above it:
scenario (read + validate) -> cluster (model, addresses, evolution) -> probes
(expansion, expectations) -> backend (the seam) / plan -> offline -> runner ->
report -> cli.
"""
