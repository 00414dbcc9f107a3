"""sslall: semi-supervised, active-learning classification of blood-smear cell images.

The public Python API is the names in `__all__` (README, "Python API"). They are imported on
first use, so `import sslall` alone loads no torch, timm or faiss (`sslall.Predictor` imports
torch when it is first touched, not before). Public modules are this package and
`sslall.config`, `sslall.errors`, `sslall.workspace` and `sslall.rounds`; everything else is
private (a leading underscore, or inside a sub-package).
"""

import importlib
import typing

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Workspace": "sslall.workspace",
    "create_workspace": "sslall.workspace",
    "find_workspace": "sslall.workspace",
    "Config": "sslall.config",
    "load_config": "sslall.config",
    "PoolStore": "sslall.store._pools",
    "ImportReport": "sslall.store._importer",
    "import_source": "sslall.store._importer",
    "RoundResult": "sslall.rounds",
    "run_round": "sslall.rounds",
    "Prediction": "sslall.model._inference",
    "Predictor": "sslall.model._inference",
    "acquire": "sslall.decide._acquisition",
    "register_strategy": "sslall.decide._acquisition",
    "register_policy": "sslall.decide._policies",
    "SimulationSpec": "sslall.experiments._simulate",
    "run_simulation": "sslall.experiments._simulate",
    "SslallError": "sslall.errors",
    "UsageError": "sslall.errors",
    "ConfigError": "sslall.errors",
    "InputError": "sslall.errors",
    "NotFoundError": "sslall.errors",
    "WorkspaceNotFound": "sslall.errors",
    "IntegrityError": "sslall.errors",
    "LockBusy": "sslall.errors",
    "ModelError": "sslall.errors",
    "LabelStudioError": "sslall.errors",
}

__all__ = [
    "Config",
    "ConfigError",
    "ImportReport",
    "InputError",
    "IntegrityError",
    "LabelStudioError",
    "LockBusy",
    "ModelError",
    "NotFoundError",
    "PoolStore",
    "Prediction",
    "Predictor",
    "RoundResult",
    "SimulationSpec",
    "SslallError",
    "UsageError",
    "Workspace",
    "WorkspaceNotFound",
    "__version__",
    "acquire",
    "create_workspace",
    "find_workspace",
    "import_source",
    "load_config",
    "register_policy",
    "register_strategy",
    "run_round",
    "run_simulation",
]

if typing.TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` imports
    from sslall.config import Config, load_config
    from sslall.decide._acquisition import acquire, register_strategy
    from sslall.decide._policies import register_policy
    from sslall.errors import (
        ConfigError,
        InputError,
        IntegrityError,
        LabelStudioError,
        LockBusy,
        ModelError,
        NotFoundError,
        SslallError,
        UsageError,
        WorkspaceNotFound,
    )
    from sslall.experiments._simulate import SimulationSpec, run_simulation
    from sslall.model._inference import Prediction, Predictor
    from sslall.rounds import RoundResult, run_round
    from sslall.store._importer import ImportReport, import_source
    from sslall.store._pools import PoolStore
    from sslall.workspace import Workspace, create_workspace, find_workspace


def __getattr__(name: str) -> object:
    """Import a public name from its module on first use (and keep it for the next one)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sslall' has no attribute {name!r}; "
                             "its public names are listed in sslall.__all__")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
