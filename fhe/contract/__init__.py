"""What client and server both read at run time: the bundle format, the model card, key sets,
projection and preprocessing loading. numpy, pydantic and the standard library; nothing of
fhe.embedding or fhe.build (the import contract in pyproject.toml)."""
