"""Data for training and checking the project's own generators: a procedural image set with known local factors
(:mod:`.procedural`) and distribution checks of generated images against it (:mod:`.checks`)."""
