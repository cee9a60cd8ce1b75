"""Training: one run from a config to its run folder (:mod:`~ablations.training.train`), the Lightning
module (:mod:`~ablations.training.system`), resume (:mod:`~ablations.training.checkpoints`), the metrics, the
inference strategies and the fault injection the reliability suite uses."""
