"""Model registry: versioned artifact directories with metadata and a PROMOTED pointer."""

from models.registry.store import (
    METADATA_FILE,
    ONNX_FILE,
    PARAMS_FILE,
    PROMOTED_FILE,
    ModelVersion,
    default_root,
    list_versions,
    load_version,
    new_version_name,
    promote,
    promoted_version,
    resolve_model_dir,
    save_version,
)

__all__ = [
    "METADATA_FILE",
    "ONNX_FILE",
    "PARAMS_FILE",
    "PROMOTED_FILE",
    "ModelVersion",
    "default_root",
    "list_versions",
    "load_version",
    "new_version_name",
    "promote",
    "promoted_version",
    "resolve_model_dir",
    "save_version",
]
