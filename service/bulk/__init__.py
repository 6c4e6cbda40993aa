"""`python -m service embed INPUT --out OUTPUT`: embed a whole file over gRPC `EmbedStream`.

readers (JSONL, CSV, Parquet rows) -> runner (chunks of rows as requests over many streams to
many targets, retries) -> journal (each finished chunk on disk, atomically: a rerun resumes)
-> writers (the journal assembled into .npy + ids, or Parquet, in input order). cli.py ties
them together; progress.py draws the bar.
"""
