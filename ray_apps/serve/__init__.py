"""Ray Serve applications of the platform (one module per service) and their launcher."""
