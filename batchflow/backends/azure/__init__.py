"""The Azure backend: Blob Storage and Azure Batch, through azure-storage-blob and azure-batch."""
