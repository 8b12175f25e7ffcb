"""The ``clip-debias`` Typer CLI. Each stage registers its commands from its own module (``register(app)``)."""
