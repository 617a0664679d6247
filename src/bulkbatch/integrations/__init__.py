"""bulkbatch on the orchestrators data teams already run: one shard per task or partition.

* :mod:`bulkbatch.integrations.airflow` (``pip install 'bulkbatch[airflow]'``): an operator
  that sends one shard, a merge operator, and an example DAG that fans shards out with
  dynamic task mapping.
* :mod:`bulkbatch.integrations.dagster` (``pip install 'bulkbatch[dagster]'``): a partitioned
  asset (one partition per shard), a merged results asset and a Courier resource.

Each imports its orchestrator, so neither is imported by ``import bulkbatch``.
"""
