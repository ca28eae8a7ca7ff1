"""What a pipeline is, before anything runs: :class:`~.dag.DAG` and :class:`~.node.Node` (validated, grouped
into topological levels), the retry and cache policies (:mod:`.policy`), and YAML pipelines (:mod:`.spec`).
Nothing here imports Ray or touches storage."""
