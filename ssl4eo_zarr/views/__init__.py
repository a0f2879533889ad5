"""The xarray views of both distributions, a pair: ``chunkfiles`` (chunk files -> one lazy Dataset, and
``open_dataset``, the entry point for either) and ``shards`` (WebDataset shards -> the same Dataset)."""
