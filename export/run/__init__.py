"""`zoo run`: the whole zoo trained, exported and checked, one row per model (``pipeline``): which rows
(``rows``), one row and its bundle (``row``), local worker processes (``pool``), a Dask cluster
(``cluster``), the output folder (``outdir``), the report (``report``) and the pictures (``pictures``).
"""
