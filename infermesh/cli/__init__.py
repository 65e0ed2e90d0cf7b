"""The ``infermesh`` command: thin typer commands over library APIs, one module per group."""
