"""The exporter's typed errors; the CLI prints each as one line and exits non-zero."""


class ExportError(Exception):
    """Base: an export that cannot go ahead, with a message that says what to fix."""


class WeightsError(ExportError):
    """The weights source is missing, unreadable or not a Paddle checkpoint / inference model."""


class ArchitectureMismatchError(ExportError):
    """The weights belong to another architecture or class count."""


class OutputError(ExportError):
    """The output folder exists (without --force) or cannot be written."""


class LabelsError(ExportError):
    """The label file is missing or its line count differs from the class count."""


class ParityError(ExportError):
    """The exported model does not reproduce the network's outputs."""
