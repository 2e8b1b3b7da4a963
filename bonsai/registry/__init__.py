"""The adapter registry: one owner of the adapter folder format, read and write.

``peft`` (PEFT's files) and ``manifest`` (bonsai's record beside them) are the format; ``hashing``
reads weights, ``identity`` names an adapter by its content; ``layout`` places versions under
``$BONSAI_HOME/adapters``, ``verify`` keeps them immutable, ``resolve`` turns names into folders;
``write`` adds versions, ``history`` moves ``current``; ``listing`` and ``evaluations`` report.
Nothing here imports the engine: the engine imports ``identity`` and ``peft``.
"""

from bonsai.registry.evaluations import evaluation_path, load_evaluation, save_evaluation
from bonsai.registry.history import history, promote, promotion_stack, rollback, rollback_target, set_current
from bonsai.registry.identity import AdapterInspector, AdapterRef, inspect_adapter
from bonsai.registry.layout import CURRENT, HISTORY, LOCK, check_version_name, current_version, list_personas, list_versions, persona_dir
from bonsai.registry.listing import VersionInfo, version_info, versions
from bonsai.registry.manifest import MANIFEST_FILE, Manifest, read_manifest
from bonsai.registry.resolve import Version, adapter_folder, open_version, resolve_persona_adapter, resolve_version, version_path
from bonsai.registry.verify import verify_version
from bonsai.registry.write import Draft, new_version

__all__ = [
    "CURRENT", "HISTORY", "LOCK", "MANIFEST_FILE", "AdapterInspector", "AdapterRef", "Draft", "Manifest", "Version", "VersionInfo",
    "adapter_folder", "check_version_name", "current_version", "evaluation_path", "history", "inspect_adapter",
    "list_personas", "list_versions", "load_evaluation", "new_version", "open_version", "persona_dir", "promote",
    "promotion_stack", "read_manifest", "resolve_persona_adapter", "resolve_version", "rollback", "rollback_target",
    "save_evaluation", "set_current", "verify_version", "version_info", "version_path", "versions",
]
