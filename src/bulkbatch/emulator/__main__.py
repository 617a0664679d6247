"""``python -m bulkbatch.emulator`` runs ``bulkbatch emulator``."""

from bulkbatch.emulator.cli import emulator_command

if __name__ == "__main__":
    emulator_command(prog_name="bulkbatch emulator")
