"""clip-debias toolchain: decompose -> locate -> correct/build -> (exporters) -> (runtime verify).

Importing this package does not import torch; the stages do, when used.
"""

__version__ = "0.1.0"
