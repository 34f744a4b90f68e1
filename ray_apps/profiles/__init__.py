"""360-degree profiles: the GetProfile lookup and its Serve deployment's logic."""
