"""LungX core: chest-imaging segmentation with exact geometry.

Importing this package is cheap: torch and MONAI load only when a task runs.
"""

__version__ = "0.1.0"
