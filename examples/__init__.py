"""Worked examples: a custom context module (``my_context.py``) and a study that sweeps it
(``my_context_study.yaml``); see docs/custom-modules.md. A package, so that ``examples.my_context:StripPooling``
imports from the repository root."""
