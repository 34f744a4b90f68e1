"""ray_apps."""
