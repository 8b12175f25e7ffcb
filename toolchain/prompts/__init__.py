"""Prompts, below both ``locate`` and ``correct``: the shipped dataset defaults and the readers of prompt files
(``defaults``, data in ``data/*.yaml``), their file model and the PerceptionCLIP context spec (``files``), and the
text side: the default template and CLIP prompt ensembling (``text``)."""
