"""What surrounds a forward pass at inference: tiled detection of large images
(:func:`mrcnn.inference.tiling.detect_tiled`)."""
