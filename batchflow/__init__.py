"""batchflow: run embarrassingly parallel command-line work on Azure Batch or locally, from one YAML file."""

__version__ = "0.1.0"
