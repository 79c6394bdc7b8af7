"""Dataset sweeps: explain, select and score every clip of a split, resumably.

:func:`run_sweep` (``selrel sweep``) computes, for every clip of a dataset split, each
method's relevance once and every sigma's selective relevance from it, and scores
them: one row per (clip, method, sigma). Batches are jit-compiled and sharded over
the devices; the rows are written shard by shard as Parquet files, so a killed sweep
rerun with the same arguments picks up where it stopped and ends with the same table.
:func:`read_table` reads it back.

Examples:
    Two clips of the synthetic benchmark (generated afresh from ``data_seed``), two
    sigmas:

    >>> from selrel_jax.sweep import read_table, run_sweep
    >>> record = run_sweep("sweeps/motion", dataset="synthetic_motion", data_seed=7, limit=2,
    ...                    model="c3d_small_motion", methods=["gradient"], sigmas=[1, 2])
    >>> record["clips"], record["rows"], record["complete"]
    (2, 4, True)
    >>> table = read_table("sweeps/motion")   # pyarrow.Table, sorted by clip, method, sigma
    >>> table.column("spatial_bias").to_numpy().shape
    (4,)
"""

from selrel_jax.sweep._run import (
    FAITHFULNESS_COLUMNS,
    KEY_COLUMNS,
    SCORE_COLUMNS,
    columns_of,
    initialize_distributed,
    run_sweep,
)
from selrel_jax.sweep._settings import (
    DEFAULT_FLOW_MIN_FLOW,
    DEFAULT_METHODS,
    DEFAULT_SIGMAS,
    DEFAULT_TEMPORAL_PADDING,
    FAITHFULNESS_REPLACEMENT,
    FAITHFULNESS_STEPS,
    MOTION_MASKS,
    PRECISION_FRACTION,
    TARGETS,
    SweepSettings,
    parse_list,
)
from selrel_jax.sweep._sources import (
    TRUTH_KEYS,
    ClipBatch,
    ClipSource,
    FlowMaskedSource,
    open_source,
)
from selrel_jax.sweep._store import (
    MANIFEST_FILE,
    TABLES_DIR,
    read_manifest,
    read_table,
    table_columns,
)

__all__ = [
    "DEFAULT_FLOW_MIN_FLOW",
    "DEFAULT_METHODS",
    "DEFAULT_SIGMAS",
    "DEFAULT_TEMPORAL_PADDING",
    "FAITHFULNESS_COLUMNS",
    "FAITHFULNESS_REPLACEMENT",
    "FAITHFULNESS_STEPS",
    "KEY_COLUMNS",
    "MANIFEST_FILE",
    "MOTION_MASKS",
    "PRECISION_FRACTION",
    "SCORE_COLUMNS",
    "TABLES_DIR",
    "TARGETS",
    "TRUTH_KEYS",
    "ClipBatch",
    "ClipSource",
    "FlowMaskedSource",
    "SweepSettings",
    "columns_of",
    "initialize_distributed",
    "open_source",
    "parse_list",
    "read_manifest",
    "read_table",
    "run_sweep",
    "table_columns",
]
