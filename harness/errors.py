"""User-facing errors: each prints as one line that names the file, field or config key at fault."""


class HarnessError(Exception):
    """Base class: the entry points print `error: <message>` and exit 2, no traceback."""


class ConfigError(HarnessError):
    """A config key has a value that cannot be used (unknown model, bad path...)."""


class DataError(HarnessError):
    """A data file is missing or malformed; the message names the file and line or field."""


def read_json(path, what: str):
    """The parsed JSON file at `path`; unreadable or malformed is a one-line DataError naming the file."""
    import json
    from pathlib import Path

    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"{p}: cannot read {what} ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{p}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
