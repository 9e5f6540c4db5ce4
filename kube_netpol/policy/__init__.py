"""Policy objects parsed from Kubernetes JSON into compiled, validated forms."""
