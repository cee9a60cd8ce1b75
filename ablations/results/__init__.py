"""The results layer: metric and column names (``names``), stored trials as pandas frames (``frames``), paired
seed statistics and verdicts (``stats``), and the comparison tables every command prints (``tables``)."""

from ablations.results import names
from ablations.results.frames import ResultsError, read_csv, storage_frames, trial_frame
from ablations.results.stats import compare_arms, resolved_best
from ablations.results.tables import arm_frame, comparison_frame, render, study_frame

__all__ = [
    "ResultsError",
    "arm_frame",
    "compare_arms",
    "comparison_frame",
    "names",
    "read_csv",
    "render",
    "resolved_best",
    "storage_frames",
    "study_frame",
    "trial_frame",
]
