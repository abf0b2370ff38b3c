"""dcl's shared core, the bottom layer: user-facing errors, strict config decoding, atomic output
folders, cache paths and the bundle (manifest) schema. It imports no other dcl package."""
