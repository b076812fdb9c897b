from batchflow.cli import entry

entry()
