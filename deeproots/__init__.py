"""deeproots: run open-weight LLMs from real model files at the speed of the metal.

    import deeproots
    model = deeproots.load("smollm2-135m")
    print(model.chat([{"role": "user", "content": "Hello!"}], max_tokens=64))
"""

from .errors import DeeprootsError, ModelFormatError, ModelNotFoundError, RequestError, UnsupportedModelError

__all__ = ["load", "Model", "SamplingParams", "DeeprootsError", "ModelFormatError", "ModelNotFoundError",
           "RequestError", "UnsupportedModelError"]


def __getattr__(name: str):
    # Imported on first use, so `import deeproots.store` (or the CLI's --help) stays light.
    if name in ("load", "Model"):
        from . import model
        return getattr(model, name)
    if name == "SamplingParams":
        from .sampling import SamplingParams
        return SamplingParams
    raise AttributeError(f"module 'deeproots' has no attribute {name!r}")
