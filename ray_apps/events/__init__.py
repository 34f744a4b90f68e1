"""Real-time event intake: validate, count in the profile store, append to the lake."""
