"""Errors that the command line turns into one clear line and a non-zero exit."""


class SteptoolError(Exception):
    """An error the user can fix (bad params, missing file, port in use): printed as one line."""


class ConfigError(SteptoolError):
    """`params.yaml` has an unknown key, a wrong type or an impossible value."""


class SchemaError(SteptoolError):
    """An artifact on disk does not have the columns or types its stage promises."""
