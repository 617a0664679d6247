"""``python -m bulkbatch`` runs the command line."""

from bulkbatch.cli import main

if __name__ == "__main__":
    main()
