"""Tools around the agent, not part of what runs on a node: the lab, the conformance
harness, the fake API server for tests, and `explain`. The agent's image leaves this
package out; nothing outside it imports it (tests/test_layers.py)."""
