"""import-legacy: adopt the older Letta-Matrix bot's rooms and space (files: its mapping files;
importer: the adoption)."""
