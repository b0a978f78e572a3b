"""Service fixtures: placeholder until the foundation's fixtures land."""
