"""One exception hierarchy for everything deeproots rejects.

Every message says what was wrong and, where there is one, what to do about it.
"""


class DeeprootsError(Exception):
    """Base class: catch this to handle any error deeproots raises on purpose."""


class ModelFormatError(DeeprootsError):
    """A model file is malformed: names the field and, where known, the byte offset."""

    def __init__(self, message: str, *, field: str | None = None, offset: int | None = None):
        where = []
        if field is not None:
            where.append(f"field {field!r}")
        if offset is not None:
            where.append(f"byte offset {offset}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.field = field
        self.offset = offset


class UnsupportedModelError(DeeprootsError):
    """A well-formed model that uses something deeproots does not implement."""


class ModelNotFoundError(DeeprootsError):
    """A model name or path that is neither stored nor a file."""


class RequestError(DeeprootsError):
    """A bad request: invalid sampling values, an empty or oversized prompt, ..."""


class DeviceError(DeeprootsError):
    """The device asked for cannot run the model: no GPU that PyTorch sees, or too little device memory."""


class TensorNotFoundError(DeeprootsError, KeyError):
    """A tensor name the file does not contain (a KeyError too, for dict-like lookups)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InternalError(DeeprootsError):
    """A mistake inside deeproots, not the caller's: e.g. a kernel handed buffers that do not match the shapes it
    was told. The server answers it with HTTP 500 and an error id in its log, never with a 4xx."""


class ShardingError(UnsupportedModelError):
    """A tensor that cannot be split over the ranks asked for (e.g. a cut that falls inside a quantization block):
    names the tensor and the split."""
