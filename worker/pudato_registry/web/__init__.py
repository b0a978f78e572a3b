"""The read-only web UI and JSON API (``pudato-registry ui``): :mod:`.app` is the Flask
shell, :mod:`.pages` the pure computations behind the pages."""
