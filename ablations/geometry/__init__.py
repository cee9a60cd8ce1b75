"""What a config builds, read off the built network: conv geometry, receptive field, gridding, params and MACs
(:mod:`~ablations.geometry.analysis`), and ``ablations describe`` (:mod:`~ablations.geometry.describe`)."""
