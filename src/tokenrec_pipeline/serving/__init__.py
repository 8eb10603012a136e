"""Recommendations from trained artefacts: known and new users, new items, request prompts."""
