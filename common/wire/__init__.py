"""What travels between the ServerApp and the ClientApps: record keys, typed fields, instructions
and run identity.

The modules, one concept each:

- ``instructions``: What the server asks a site to do in one message, as typed data on both
  ends.
- ``object_pull``: A Runtime API ``PullObject`` call that waits out an object still being
  uploaded.
- ``record_digest``: The digest a site signs: every record of a reply except the signature
  itself.
- ``record_fields``: Typed, validated access to the fields of Flower records.
- ``records``: Keys of the records and configs exchanged between the ServerApp and the
  ClientApps.
- ``run_identity``: What identifies a run to a site that must approve it: a hash of the study's
  config and a hash of the Consortia code that will run it.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.common.wire.instructions import (
        Instruction as Instruction,
    )
    from consortia.common.wire.instructions import (
        get_task as get_task,
    )
    from consortia.common.wire.object_pull import (
        DEFAULT_POLL_S as DEFAULT_POLL_S,
    )
    from consortia.common.wire.object_pull import (
        DEFAULT_WAIT_S as DEFAULT_WAIT_S,
    )
    from consortia.common.wire.object_pull import (
        ObjectPull as ObjectPull,
    )
    from consortia.common.wire.object_pull import (
        PullObjectCall as PullObjectCall,
    )
    from consortia.common.wire.record_fields import (
        RecordFieldError as RecordFieldError,
    )
    from consortia.common.wire.record_fields import (
        get_array as get_array,
    )
    from consortia.common.wire.record_fields import (
        get_array_record as get_array_record,
    )
    from consortia.common.wire.record_fields import (
        get_bool as get_bool,
    )
    from consortia.common.wire.record_fields import (
        get_config_record as get_config_record,
    )
    from consortia.common.wire.record_fields import (
        get_float as get_float,
    )
    from consortia.common.wire.record_fields import (
        get_int as get_int,
    )
    from consortia.common.wire.record_fields import (
        get_metric_record as get_metric_record,
    )
    from consortia.common.wire.record_fields import (
        get_str as get_str,
    )
    from consortia.common.wire.record_fields import (
        message_round as message_round,
    )
    from consortia.common.wire.record_fields import (
        metric_floats as metric_floats,
    )
    from consortia.common.wire.record_fields import (
        metric_lists as metric_lists,
    )
    from consortia.common.wire.run_identity import (
        APP_PACKAGES as APP_PACKAGES,
    )
    from consortia.common.wire.run_identity import (
        DISTRIBUTION as DISTRIBUTION,
    )
    from consortia.common.wire.run_identity import (
        SHORT_HASH_LENGTH as SHORT_HASH_LENGTH,
    )
    from consortia.common.wire.run_identity import (
        RunIdentity as RunIdentity,
    )
    from consortia.common.wire.run_identity import (
        app_hash as app_hash,
    )
    from consortia.common.wire.run_identity import (
        app_hash_details as app_hash_details,
    )
    from consortia.common.wire.run_identity import (
        canonical_settings_json as canonical_settings_json,
    )
    from consortia.common.wire.run_identity import (
        config_hash as config_hash,
    )
    from consortia.common.wire.run_identity import (
        hash_package_files as hash_package_files,
    )
    from consortia.common.wire.run_identity import (
        package_roots as package_roots,
    )
    from consortia.common.wire.run_identity import (
        short_hash as short_hash,
    )

__all__ = [
    "APP_PACKAGES",
    "DEFAULT_POLL_S",
    "DEFAULT_WAIT_S",
    "DISTRIBUTION",
    "SHORT_HASH_LENGTH",
    "Instruction",
    "ObjectPull",
    "PullObjectCall",
    "RecordFieldError",
    "RunIdentity",
    "app_hash",
    "app_hash_details",
    "canonical_settings_json",
    "config_hash",
    "get_array",
    "get_array_record",
    "get_bool",
    "get_config_record",
    "get_float",
    "get_int",
    "get_metric_record",
    "get_str",
    "get_task",
    "hash_package_files",
    "message_round",
    "metric_floats",
    "metric_lists",
    "package_roots",
    "short_hash",
]

_EXPORTS = {
    "APP_PACKAGES": "run_identity",
    "DEFAULT_POLL_S": "object_pull",
    "DEFAULT_WAIT_S": "object_pull",
    "DISTRIBUTION": "run_identity",
    "Instruction": "instructions",
    "ObjectPull": "object_pull",
    "PullObjectCall": "object_pull",
    "RecordFieldError": "record_fields",
    "RunIdentity": "run_identity",
    "SHORT_HASH_LENGTH": "run_identity",
    "app_hash": "run_identity",
    "app_hash_details": "run_identity",
    "canonical_settings_json": "run_identity",
    "config_hash": "run_identity",
    "get_array": "record_fields",
    "get_array_record": "record_fields",
    "get_bool": "record_fields",
    "get_config_record": "record_fields",
    "get_float": "record_fields",
    "get_int": "record_fields",
    "get_metric_record": "record_fields",
    "get_str": "record_fields",
    "get_task": "instructions",
    "hash_package_files": "run_identity",
    "message_round": "record_fields",
    "metric_floats": "record_fields",
    "metric_lists": "record_fields",
    "package_roots": "run_identity",
    "short_hash": "run_identity",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
