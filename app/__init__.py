"""The `inferl` command line: LightningCLI with fit / validate / test / predict."""
