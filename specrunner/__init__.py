"""specrunner: run Runware image-editing campaigns declared in YAML.

Pipeline: spec (YAML -> Spec) -> plan (Spec -> Tasks) -> run (Tasks -> record) -> report.
"""

__version__ = "0.1.0"
