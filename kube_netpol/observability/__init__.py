"""What the agent tells operators: metrics, decision records, explanations."""
