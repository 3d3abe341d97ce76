"""clipdex core: configuration, database, model loading and the query core shared by the indexer and the web app."""

__version__ = "0.1.0"
