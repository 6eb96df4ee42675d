"""Matrix-side helpers: ids, formatting, rooms."""
