"""Build time only: the recipes that train, compile, measure and write bundles and their cards.
No client or server process imports this package (the import contract in pyproject.toml)."""
