"""The built-in evaluators; registered through the same entry points as plugins."""
