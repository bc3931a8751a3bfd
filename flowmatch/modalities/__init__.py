"""The modalities: one folder each (points and arrays with images, tables, tokens, manifolds), each plugging
into the engine through one seam (:mod:`flowmatch.engine.seam`) and named in its registry."""
