"""``python -m bulkbatch.webhooks`` runs ``bulkbatch webhooks``."""

from bulkbatch.webhooks.cli import webhooks_command

if __name__ == "__main__":
    webhooks_command(prog_name="bulkbatch webhooks")
