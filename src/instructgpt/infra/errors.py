"""The one exception type users see: a clear message, no traceback (the CLI prints it and exits with 2)."""


class InstructGPTError(Exception):
    """Bad input (recipe, data, model path, output directory). The message names the file, key or row."""
