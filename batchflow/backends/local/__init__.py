"""The local backend: a machine's folders as storage, its processes as Batch nodes."""
