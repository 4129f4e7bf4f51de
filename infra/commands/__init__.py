"""The `lopt` subcommands that do more than call one library function."""
