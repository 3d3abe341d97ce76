"""The indexing pipeline: scan an export, read, decode, describe and embed each image, store it."""
